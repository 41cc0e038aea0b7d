//! Placeholder (issue 17): the cluster benchmark is being written.

fn main() {}
