//! Placeholder (issue 17): the singleton benchmark is being written.

fn main() {}
