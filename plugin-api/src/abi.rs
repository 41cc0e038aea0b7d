//! The C ABI between the Graft host and a plugin: the only types that cross the boundary.
//!
//! **Architecture Invariant:** only `#[repr(C)]` structs, `extern "C"` function pointers,
//! integers and borrowed `(ptr, len)` byte slices ([`Bytes`]) cross. No Rust standard
//! library type, no trait object and no ownership ever crosses: inputs are borrowed for the
//! duration of one call, outputs are handed to a host callback ([`HostVtable::output`])
//! that copies them before returning.
//!
//! The plugin exports exactly one symbol, [`ENTRY_SYMBOL`], a static [`PluginHeader`]
//! whose name carries [`ABI_MAJOR`]. The host reads the header before it calls anything:
//! magic, ABI version, the layout fingerprint, panic strategy, name and version. An
//! incompatible major simply lacks the symbol.
//!
//! # Evolution rules (what is tricky)
//!
//! - **Vtables only grow at their end, and each growth bumps [`ABI_MINOR`].** Each side
//!   declares the size of its own vtable: the plugin in [`PluginHeader::vtable_size`], the
//!   host in [`HostVtable::size`]. A reader reads only the entries that lie wholly inside
//!   the size the other side declared, and treats the others as *not implemented*: the
//!   host copies the plugin's declared prefix into a zeroed [`PluginVtable`], where every
//!   entry added after ABI 1.0 is an `Option` (so an absent one reads as `None`); the
//!   plugin checks [`HostVtable::size`] (and that the entry is `Some`) before it uses a
//!   host entry newer than ABI 1.0; a host entry it cannot use reads as *unavailable*.
//! - **Which host runs which plugin.** A host runs every plugin of its major whose minor is
//!   not newer than its own ([`ABI_MINOR`]); a plugin of a newer minor is refused before
//!   any of its code is called (it may rely on host entries this host lacks). A plugin's
//!   `vtable_size` must hold at least the entries of the minor it declares
//!   ([`plugin_vtable_size`]).
//! - ABI 1.0 has the twelve entries from `initialize` to `drop_instance`
//!   ([`PLUGIN_VTABLE_SIZE_1_0`]); ABI 1.1 appends [`PluginVtable::health`] and
//!   [`PluginVtable::format_status`]; ABI 1.2 appends four cluster entries to the
//!   *host* vtable ([`HostVtable::hosts`], [`HostVtable::register_global`],
//!   [`HostVtable::monitor`], [`HostVtable::monitor_hosts`]) and leaves the plugin vtable
//!   as in 1.1.
//! - **New info kinds reach only plugins that asked.** A plugin built before ABI 1.2
//!   decodes an unknown info kind as its own `Info` type and would refuse it, so the host
//!   sends [`INFO_HOST_UP`] and [`INFO_HOST_DOWN`] only to actors that turned them on with
//!   [`HostVtable::monitor_hosts`], an entry only 1.2 plugins can call.
//!
//! # The layout fingerprint, versioned by minor
//!
//! [`layout_fingerprint`]`(minor)` is the value a plugin of that minor carries in its
//! header; the host compares the header's fingerprint with the one for the header's own
//! minor, so plugins of every supported minor load.
//! - For minor 0 it is the ABI 1.0 scheme, kept bit for bit because plugins built with the
//!   frozen 1.0 crate carry it: an FNV-1a hash of the sizes, alignments and offsets of the
//!   header, [`Bytes`] and the ABI 1.0 fields of both vtables. It does **not** cover
//!   function signatures; for ABI 1.0 plugins that value is a known-good constant
//!   ([`LAYOUT_FINGERPRINT_1_0`]), and a 1.0 plugin built from a modified crate with the
//!   same layout but other signatures cannot be told apart. That is the cost of not
//!   breaking every 1.0 plugin.
//! - From minor 1 on it also hashes each vtable entry's function signature (the text of
//!   its fn-pointer type, [`PLUGIN_VTABLE_SIGNATURES`] and [`HOST_VTABLE_SIGNATURES`]) for
//!   every entry that exists at that minor, in order: a `graft-plugin` whose `handle_cast`
//!   took other arguments with the same layout now carries another fingerprint and is
//!   refused. A unit test checks each signature text against `std::any::type_name` of the
//!   field's type, so the texts cannot drift from the structs.
//! - Appending entries for a new minor leaves the fingerprints of older minors unchanged;
//!   reordering or resizing anything changes them all.

use std::ffi::c_void;
use std::mem::{align_of, offset_of, size_of};

/// The major ABI version. A change here is a new entry symbol name.
pub const ABI_MAJOR: u16 = 1;
/// The minor ABI version: bumped whenever a vtable grows at its end. 1: the plugin vtable
/// gained `health` and `format_status`. 2: the host vtable gained `hosts`,
/// `register_global`, `monitor` and `monitor_hosts` (clusters).
pub const ABI_MINOR: u16 = 2;
/// The first eight bytes of every header: `GRAFTPLG` in little-endian order.
pub const MAGIC: u64 = u64::from_le_bytes(*b"GRAFTPLG");
/// The exported symbol (NUL-terminated) whose address is the plugin's [`PluginHeader`].
pub const ENTRY_SYMBOL: &[u8] = b"graft_plugin_v1\0";
/// The version of this crate, recorded in every plugin header for diagnostics.
pub const API_VERSION: &str = env!("CARGO_PKG_VERSION");
/// The target triple this crate (and therefore the plugin) was compiled for.
pub const TARGET: &str = env!("GRAFT_PLUGIN_TARGET");

/// A borrowed byte slice: valid only for the duration of the call it is passed to.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Bytes {
    /// Start of the slice; may dangle when `len` is zero.
    pub ptr: *const u8,
    /// Length in bytes.
    pub len: usize,
}

impl Bytes {
    /// An empty slice.
    pub const EMPTY: Bytes = Bytes {
        ptr: std::ptr::NonNull::<u8>::dangling().as_ptr(),
        len: 0,
    };

    /// Borrows a slice for the duration of a call.
    pub const fn from_slice(slice: &[u8]) -> Bytes {
        Bytes {
            ptr: slice.as_ptr(),
            len: slice.len(),
        }
    }

    /// Reborrows the slice.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes that stay valid and unchanged for `'a`.
    pub unsafe fn as_slice<'a>(self) -> &'a [u8] {
        if self.len == 0 {
            return &[];
        }
        // SAFETY: the caller guarantees `ptr..ptr+len` is readable for `'a`; the zero-length
        // case returned above, so `ptr` is non-null here.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// The header a plugin exports under [`ENTRY_SYMBOL`]; read before anything is called.
#[repr(C)]
#[derive(Debug)]
pub struct PluginHeader {
    /// Always [`MAGIC`].
    pub magic: u64,
    /// `size_of::<PluginHeader>()` as the plugin saw it.
    pub header_size: u32,
    /// [`ABI_MAJOR`] the plugin was built with.
    pub abi_major: u16,
    /// [`ABI_MINOR`] the plugin was built with.
    pub abi_minor: u16,
    /// [`LAYOUT_FINGERPRINT`] the plugin was built with.
    pub layout_fingerprint: u64,
    /// 1 when the plugin was built with `panic = "unwind"`, 0 for `panic = "abort"`.
    pub panic_unwind: u32,
    /// `size_of::<PluginVtable>()` as the plugin saw it: the host reads only the entries
    /// inside it.
    pub vtable_size: u32,
    /// The plugin's name (UTF-8).
    pub name: Bytes,
    /// The plugin's semver version (UTF-8).
    pub version: Bytes,
    /// The `graft-plugin` version it was built with (UTF-8).
    pub api_version: Bytes,
    /// The target triple it was built for (UTF-8).
    pub target: Bytes,
    /// The plugin's entry points.
    pub vtable: *const PluginVtable,
}

// SAFETY: a header is immutable static data; its pointers point to other immutable statics
// (string literals and the vtable) of the same image, so sharing it between threads is sound.
unsafe impl Sync for PluginHeader {}

/// Where the host copies bytes that the plugin asked for (a plugin-owned buffer).
pub type SinkFn = unsafe extern "C" fn(sink: *mut c_void, data: Bytes);

/// What the host offers the plugin. Passed once to [`PluginVtable::initialize`]; a static
/// of the host, valid for the life of the process.
///
/// Every callback takes the `ctx` pointer the host passed to the plugin call in progress;
/// callbacks are only valid during that call, on that thread.
#[repr(C)]
pub struct HostVtable {
    /// `size_of::<HostVtable>()` as the host saw it.
    pub size: u32,
    /// [`ABI_MINOR`] the host was built with.
    pub abi_minor: u32,
    /// Hands an output of the current callback (an `OUTPUT_*` kind) to the host, which
    /// copies it.
    pub output: unsafe extern "C" fn(ctx: *mut c_void, kind: u32, data: Bytes),
    /// Emits a log record (`level`: 1 error … 5 trace). `ctx` may be null outside a call.
    pub log: unsafe extern "C" fn(ctx: *mut c_void, level: u32, target: Bytes, message: Bytes),
    /// Sends a cast or info message (`SEND_*`) to a named actor; returns a `SERVICE_*` code.
    pub send: unsafe extern "C" fn(ctx: *mut c_void, kind: u32, to: Bytes, message: Bytes) -> u32,
    /// Calls a named actor and waits at most `timeout_ms`; the reply (or, on failure, an
    /// error text) goes to `sink`. Returns a `SERVICE_*` code.
    pub call: unsafe extern "C" fn(
        ctx: *mut c_void,
        to: Bytes,
        message: Bytes,
        timeout_ms: u64,
        sink: *mut c_void,
        sink_fn: SinkFn,
    ) -> u32,
    /// Schedules `message` as an info message to the calling actor after `delay_ms`,
    /// every `delay_ms` when `repeat` is 1. Returns a timer id (never 0), or 0 on failure.
    pub send_after:
        unsafe extern "C" fn(ctx: *mut c_void, delay_ms: u64, repeat: u32, message: Bytes) -> u64,
    /// Cancels a timer; returns 1 when it was still pending.
    pub cancel_timer: unsafe extern "C" fn(ctx: *mut c_void, timer: u64) -> u32,
    /// Replies later to a call (the token from `handle_call`); returns a `SERVICE_*` code.
    pub reply: unsafe extern "C" fn(ctx: *mut c_void, token: u64, message: Bytes) -> u32,
    /// Writes the calling actor's name to `sink`.
    pub self_name: unsafe extern "C" fn(ctx: *mut c_void, sink: *mut c_void, sink_fn: SinkFn),
    /// ABI 1.2: writes the cluster's live hosts (this one included, sorted), an encoded
    /// `Vec<String>`, to `sink`; on failure an error text. Returns a `SERVICE_*` code.
    pub hosts:
        Option<unsafe extern "C" fn(ctx: *mut c_void, sink: *mut c_void, sink_fn: SinkFn) -> u32>,
    /// ABI 1.2: registers the calling actor's name cluster-wide; on failure an error text
    /// goes to `sink`. Returns a `SERVICE_*` code.
    pub register_global:
        Option<unsafe extern "C" fn(ctx: *mut c_void, sink: *mut c_void, sink_fn: SinkFn) -> u32>,
    /// ABI 1.2: monitors the actor `to` names (`name` or `name@host`, here or on another
    /// host); returns the monitor id, 0 when there is no such name here and no cluster.
    pub monitor: Option<unsafe extern "C" fn(ctx: *mut c_void, to: Bytes) -> u64>,
    /// ABI 1.2: turns [`INFO_HOST_UP`]/[`INFO_HOST_DOWN`] info messages to the calling
    /// actor on (1) or off (0). Returns a `SERVICE_*` code.
    pub monitor_hosts: Option<unsafe extern "C" fn(ctx: *mut c_void, on: u32) -> u32>,
}

/// The plugin's entry points. Every one catches panics inside the plugin and returns a
/// `STATUS_*` code; on failure the message was handed to the host as `OUTPUT_MESSAGE`.
#[repr(C)]
pub struct PluginVtable {
    /// Stores the host vtable, installs logging and the panic hook. Called once per load.
    pub initialize: unsafe extern "C" fn(host: *const HostVtable, max_log_level: u32) -> u32,
    /// Creates an instance from encoded start arguments; writes its handle to `instance`.
    pub init:
        unsafe extern "C" fn(ctx: *mut c_void, args: Bytes, instance: *mut *mut c_void) -> u32,
    /// Handles a call. `reply_token` identifies the caller for a deferred reply.
    pub handle_call: unsafe extern "C" fn(
        instance: *mut c_void,
        ctx: *mut c_void,
        request: Bytes,
        reply_token: u64,
    ) -> u32,
    /// Handles a cast.
    pub handle_cast:
        unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void, message: Bytes) -> u32,
    /// Handles an info message of an `INFO_*` kind.
    pub handle_info: unsafe extern "C" fn(
        instance: *mut c_void,
        ctx: *mut c_void,
        kind: u32,
        message: Bytes,
    ) -> u32,
    /// Handles a continuation requested by the previous callback.
    pub handle_continue:
        unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void, argument: Bytes) -> u32,
    /// Runs the terminate callback with a stop reason (UTF-8 text).
    pub terminate:
        unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void, reason: Bytes) -> u32,
    /// Outputs the encoded state as `OUTPUT_STATE`.
    pub encode_state: unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void) -> u32,
    /// Creates an instance by decoding state bytes as this plugin's own state.
    pub restore_state:
        unsafe extern "C" fn(ctx: *mut c_void, state: Bytes, instance: *mut *mut c_void) -> u32,
    /// Creates an instance from an older version's state (upgrade, appup `code_change`).
    pub code_change: unsafe extern "C" fn(
        ctx: *mut c_void,
        from_version: Bytes,
        state: Bytes,
        extra: Bytes,
        instance: *mut *mut c_void,
    ) -> u32,
    /// Outputs the state converted to an older version's shape as `OUTPUT_STATE` (downgrade).
    pub downgrade_state: unsafe extern "C" fn(
        instance: *mut c_void,
        ctx: *mut c_void,
        to_version: Bytes,
        extra: Bytes,
    ) -> u32,
    /// Drops an instance (its `Drop` runs inside the plugin, panics caught).
    pub drop_instance: unsafe extern "C" fn(instance: *mut c_void) -> u32,
    /// ABI 1.1: outputs the instance's own view of its health, an encoded
    /// [`crate::Health`], as `OUTPUT_REPLY`. `None` (what the host reads for an ABI 1.0
    /// plugin, whose vtable ends before it): not implemented.
    pub health: Option<unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void) -> u32>,
    /// ABI 1.1: outputs what operators and logs see of the state (OTP's `format_status`,
    /// secrets redacted), encoded, as `OUTPUT_STATE`. `None`: not implemented (the host
    /// shows the state itself).
    pub format_status: Option<unsafe extern "C" fn(instance: *mut c_void, ctx: *mut c_void) -> u32>,
}

/// The callback succeeded.
pub const STATUS_OK: u32 = 0;
/// The callback returned an error; the message is in `OUTPUT_MESSAGE`.
pub const STATUS_ERROR: u32 = 1;
/// The callback panicked; the panic message is in `OUTPUT_MESSAGE`.
pub const STATUS_PANIC: u32 = 2;
/// The input bytes did not decode as the type the plugin expects; nothing ran.
pub const STATUS_BAD_INPUT: u32 = 3;

/// A reply to a call, or the answer of a query callback (`health`).
pub const OUTPUT_REPLY: u32 = 1;
/// Encoded state (or, from `format_status`, the formatted state).
pub const OUTPUT_STATE: u32 = 2;
/// The actor asked to stop; the data is the reason text.
pub const OUTPUT_STOP: u32 = 3;
/// The actor asked for `handle_continue` with this encoded argument.
pub const OUTPUT_CONTINUE: u32 = 4;
/// An error or panic message (UTF-8).
pub const OUTPUT_MESSAGE: u32 = 5;
/// `init` declined to start (OTP's `ignore`); no data. Sent with `STATUS_ERROR`, so a host
/// that does not know this kind reads it as a failed start.
pub const OUTPUT_IGNORE: u32 = 6;
/// The actor asks for an inactivity timeout (OTP's `timeout` in a callback's return): the
/// data is the milliseconds, a little-endian `u64`. If no message arrives within them
/// after this callback, the actor gets an `INFO_TIMEOUT` info message.
pub const OUTPUT_TIMEOUT: u32 = 7;

/// A message of the plugin's own `Info` type.
pub const INFO_MESSAGE: u32 = 0;
/// A monitor fired: the data is an encoded [`crate::Down`].
pub const INFO_DOWN: u32 = 1;
/// A linked actor exited and this actor traps exits: the data is an encoded [`crate::Exit`].
pub const INFO_EXIT: u32 = 2;
/// The inactivity timeout the last callback asked for (`OUTPUT_TIMEOUT`) passed without a
/// message: no data.
pub const INFO_TIMEOUT: u32 = 3;
/// ABI 1.2: a host joined the cluster (sent only to an actor that asked with
/// `monitor_hosts`): the data is an encoded [`crate::HostEvent`].
pub const INFO_HOST_UP: u32 = 4;
/// ABI 1.2: a host left the cluster or died (sent only to an actor that asked with
/// `monitor_hosts`): the data is an encoded [`crate::HostEvent`].
pub const INFO_HOST_DOWN: u32 = 5;

/// `send` a cast.
pub const SEND_CAST: u32 = 0;
/// `send` an info message.
pub const SEND_INFO: u32 = 1;

/// A host service succeeded.
pub const SERVICE_OK: u32 = 0;
/// No actor has that name.
pub const SERVICE_NOT_FOUND: u32 = 1;
/// The call timed out.
pub const SERVICE_TIMEOUT: u32 = 2;
/// The actor exited before it replied.
pub const SERVICE_EXITED: u32 = 3;
/// The service is not available in this context.
pub const SERVICE_UNAVAILABLE: u32 = 4;
/// The callee refused the message (it did not decode, or the callback failed).
pub const SERVICE_REFUSED: u32 = 5;

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const FNV_PRIME: u64 = 0x0000_0100_0000_01b3;

const fn fnv(mut hash: u64, values: &[usize]) -> u64 {
    let mut index = 0;
    while index < values.len() {
        let bytes = (values[index] as u64).to_le_bytes();
        let mut byte = 0;
        while byte < 8 {
            hash ^= bytes[byte] as u64;
            hash = hash.wrapping_mul(FNV_PRIME);
            byte += 1;
        }
        index += 1;
    }
    hash
}

const fn fnv_text(mut hash: u64, text: &str) -> u64 {
    let bytes = text.as_bytes();
    let mut index = 0;
    while index < bytes.len() {
        hash ^= bytes[index] as u64;
        hash = hash.wrapping_mul(FNV_PRIME);
        index += 1;
    }
    // A terminator, so that ("ab", "c") and ("a", "bc") hash differently.
    hash ^= 0xff;
    hash.wrapping_mul(FNV_PRIME)
}

/// One vtable entry's signature, as the fingerprint hashes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EntrySignature {
    /// The field's name.
    pub field: &'static str,
    /// The ABI minor that added it.
    pub since_minor: u16,
    /// The field's type as `std::any::type_name` spells it.
    pub signature: &'static str,
}

const fn entry(field: &'static str, since_minor: u16, signature: &'static str) -> EntrySignature {
    EntrySignature {
        field,
        since_minor,
        signature,
    }
}

/// The signature of every [`PluginVtable`] entry, in field order.
pub const PLUGIN_VTABLE_SIGNATURES: &[EntrySignature] = &[
    entry(
        "initialize",
        0,
        "unsafe extern \"C\" fn(*const graft_plugin::abi::HostVtable, u32) -> u32",
    ),
    entry(
        "init",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes, *mut *mut core::ffi::c_void) -> u32",
    ),
    entry(
        "handle_call",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, graft_plugin::abi::Bytes, u64) -> u32",
    ),
    entry(
        "handle_cast",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "handle_info",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, u32, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "handle_continue",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "terminate",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "encode_state",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void) -> u32",
    ),
    entry(
        "restore_state",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes, *mut *mut core::ffi::c_void) -> u32",
    ),
    entry(
        "code_change",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes, *mut *mut core::ffi::c_void) -> u32",
    ),
    entry(
        "downgrade_state",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "drop_instance",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void) -> u32",
    ),
    entry(
        "health",
        1,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void) -> u32>",
    ),
    entry(
        "format_status",
        1,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void) -> u32>",
    ),
];

/// The signature of every [`HostVtable`] entry (after `size` and `abi_minor`), in field
/// order.
pub const HOST_VTABLE_SIGNATURES: &[EntrySignature] = &[
    entry(
        "output",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u32, graft_plugin::abi::Bytes)",
    ),
    entry(
        "log",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u32, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes)",
    ),
    entry(
        "send",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u32, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "call",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes, graft_plugin::abi::Bytes, u64, *mut core::ffi::c_void, unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes)) -> u32",
    ),
    entry(
        "send_after",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u64, u32, graft_plugin::abi::Bytes) -> u64",
    ),
    entry(
        "cancel_timer",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u64) -> u32",
    ),
    entry(
        "reply",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, u64, graft_plugin::abi::Bytes) -> u32",
    ),
    entry(
        "self_name",
        0,
        "unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes))",
    ),
    entry(
        "hosts",
        2,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes)) -> u32>",
    ),
    entry(
        "register_global",
        2,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, *mut core::ffi::c_void, unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes)) -> u32>",
    ),
    entry(
        "monitor",
        2,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes) -> u64>",
    ),
    entry(
        "monitor_hosts",
        2,
        "core::option::Option<unsafe extern \"C\" fn(*mut core::ffi::c_void, u32) -> u32>",
    ),
];

/// The ABI 1.0 fingerprint: sizes, alignments and offsets only (see the module docs).
const fn layout_fingerprint_1_0() -> u64 {
    let hash = fnv(
        FNV_OFFSET,
        &[
            size_of::<usize>(),
            size_of::<Bytes>(),
            align_of::<Bytes>(),
            offset_of!(Bytes, ptr),
            offset_of!(Bytes, len),
        ],
    );
    let hash = fnv(
        hash,
        &[
            size_of::<PluginHeader>(),
            align_of::<PluginHeader>(),
            offset_of!(PluginHeader, magic),
            offset_of!(PluginHeader, header_size),
            offset_of!(PluginHeader, abi_major),
            offset_of!(PluginHeader, abi_minor),
            offset_of!(PluginHeader, layout_fingerprint),
            offset_of!(PluginHeader, panic_unwind),
            offset_of!(PluginHeader, vtable_size),
            offset_of!(PluginHeader, name),
            offset_of!(PluginHeader, version),
            offset_of!(PluginHeader, api_version),
            offset_of!(PluginHeader, target),
            offset_of!(PluginHeader, vtable),
        ],
    );
    let hash = fnv(
        hash,
        &[
            offset_of!(HostVtable, size),
            offset_of!(HostVtable, abi_minor),
            offset_of!(HostVtable, output),
            offset_of!(HostVtable, log),
            offset_of!(HostVtable, send),
            offset_of!(HostVtable, call),
            offset_of!(HostVtable, send_after),
            offset_of!(HostVtable, cancel_timer),
            offset_of!(HostVtable, reply),
            offset_of!(HostVtable, self_name),
        ],
    );
    fnv(
        hash,
        &[
            offset_of!(PluginVtable, initialize),
            offset_of!(PluginVtable, init),
            offset_of!(PluginVtable, handle_call),
            offset_of!(PluginVtable, handle_cast),
            offset_of!(PluginVtable, handle_info),
            offset_of!(PluginVtable, handle_continue),
            offset_of!(PluginVtable, terminate),
            offset_of!(PluginVtable, encode_state),
            offset_of!(PluginVtable, restore_state),
            offset_of!(PluginVtable, code_change),
            offset_of!(PluginVtable, downgrade_state),
            offset_of!(PluginVtable, drop_instance),
        ],
    )
}

/// The fingerprint every ABI 1.0 plugin carries (the frozen 1.0 crate's
/// `LAYOUT_FINGERPRINT`): a known-good constant, checked against the 1.0 scheme by a test.
pub const LAYOUT_FINGERPRINT_1_0: u64 = 0x762f_7ee5_a8b0_a7c7;

/// The fingerprint of ABI minor `minor` computed from `signatures` (which tests alter to
/// prove a signature change shows); `None` for a minor newer than this crate's.
pub const fn fingerprint_with(
    minor: u16,
    plugin_signatures: &[EntrySignature],
    host_signatures: &[EntrySignature],
) -> Option<u64> {
    if minor > ABI_MINOR {
        return None;
    }
    let mut hash = layout_fingerprint_1_0();
    if minor == 0 {
        return Some(hash);
    }
    // From 1.1 on: the minor, the vtable size it needs and the offsets of the entries it
    // added (a later minor adds its own under `if minor >= N`, so the values of older
    // minors never change), then the signature of every entry that exists at `minor`.
    let Some(vtable_size) = plugin_vtable_size(minor) else {
        return None;
    };
    hash = fnv(
        hash,
        &[
            minor as usize,
            vtable_size,
            offset_of!(PluginVtable, health),
            offset_of!(PluginVtable, format_status),
        ],
    );
    if minor >= 2 {
        hash = fnv(
            hash,
            &[
                offset_of!(HostVtable, hosts),
                offset_of!(HostVtable, register_global),
                offset_of!(HostVtable, monitor),
                offset_of!(HostVtable, monitor_hosts),
                HOST_VTABLE_SIZE_1_2,
            ],
        );
    }
    let mut index = 0;
    while index < plugin_signatures.len() {
        if plugin_signatures[index].since_minor <= minor {
            hash = fnv_text(hash, plugin_signatures[index].field);
            hash = fnv_text(hash, plugin_signatures[index].signature);
        }
        index += 1;
    }
    let mut index = 0;
    while index < host_signatures.len() {
        if host_signatures[index].since_minor <= minor {
            hash = fnv_text(hash, host_signatures[index].field);
            hash = fnv_text(hash, host_signatures[index].signature);
        }
        index += 1;
    }
    Some(hash)
}

/// The layout fingerprint a plugin built against ABI `1.minor` carries; `None` for a
/// minor newer than this crate's. See the module docs for what it covers.
pub const fn layout_fingerprint(minor: u16) -> Option<u64> {
    fingerprint_with(minor, PLUGIN_VTABLE_SIGNATURES, HOST_VTABLE_SIGNATURES)
}

/// The fingerprint of this crate's ABI ([`ABI_MINOR`]): what plugins built now carry.
pub const LAYOUT_FINGERPRINT: u64 = match layout_fingerprint(ABI_MINOR) {
    Some(fingerprint) => fingerprint,
    None => panic!("the current minor always has a fingerprint"),
};

/// The size of the ABI 1.0 plugin vtable (its twelve entries): the least a plugin may
/// declare.
pub const PLUGIN_VTABLE_SIZE_1_0: usize =
    offset_of!(PluginVtable, drop_instance) + size_of::<usize>();
/// The size of the ABI 1.1 plugin vtable (`health` and `format_status` appended).
pub const PLUGIN_VTABLE_SIZE_1_1: usize =
    offset_of!(PluginVtable, format_status) + size_of::<usize>();
/// The size of the ABI 1.0 host vtable: the least a host may declare.
pub const HOST_VTABLE_SIZE_1_0: usize = offset_of!(HostVtable, self_name) + size_of::<usize>();
/// The size of the ABI 1.2 host vtable (`hosts`, `register_global`, `monitor` and
/// `monitor_hosts` appended): a plugin uses those entries only below a `size` this large.
pub const HOST_VTABLE_SIZE_1_2: usize = offset_of!(HostVtable, monitor_hosts) + size_of::<usize>();

/// The least `vtable_size` a plugin of ABI `1.minor` declares (`None`: a newer minor).
pub const fn plugin_vtable_size(minor: u16) -> Option<usize> {
    match minor {
        0 => Some(PLUGIN_VTABLE_SIZE_1_0),
        1 | 2 => Some(PLUGIN_VTABLE_SIZE_1_1),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A deliberate change of the ABI layout must change this constant, and with it
    /// `ABI_MAJOR` or `ABI_MINOR`: review both before updating the snapshot.
    #[test]
    fn layout_fingerprint_matches_the_committed_snapshot() {
        assert_eq!(LAYOUT_FINGERPRINT, 0x27ae_b456_13e3_62b3_u64);
    }

    /// Plugins built for ABI 1.1 carry this value: it must never change.
    #[test]
    fn the_abi_1_1_fingerprint_is_what_1_1_plugins_carry() {
        assert_eq!(layout_fingerprint(1), Some(0x3bd5_97f1_a5af_e6a6_u64));
        assert_ne!(layout_fingerprint(2), layout_fingerprint(1));
    }

    /// Plugins built with the frozen ABI 1.0 crate carry this value: it must never change.
    #[test]
    fn the_abi_1_0_fingerprint_is_what_1_0_plugins_carry() {
        assert_eq!(layout_fingerprint(0), Some(LAYOUT_FINGERPRINT_1_0));
        assert_eq!(layout_fingerprint_1_0(), 0x762f_7ee5_a8b0_a7c7_u64);
        assert_ne!(layout_fingerprint(1), layout_fingerprint(0));
        assert_eq!(layout_fingerprint(ABI_MINOR + 1), None);
    }

    #[test]
    fn header_and_vtables_have_the_expected_sizes_on_64_bit() {
        assert_eq!(size_of::<Bytes>(), 16);
        assert_eq!(size_of::<PluginHeader>(), 104);
        assert_eq!(PLUGIN_VTABLE_SIZE_1_0, 12 * 8);
        assert_eq!(PLUGIN_VTABLE_SIZE_1_1, 14 * 8);
        assert_eq!(size_of::<PluginVtable>(), PLUGIN_VTABLE_SIZE_1_1);
        assert_eq!(HOST_VTABLE_SIZE_1_0, 8 + 8 * 8);
        assert_eq!(HOST_VTABLE_SIZE_1_2, 8 + 12 * 8);
        assert_eq!(size_of::<HostVtable>(), HOST_VTABLE_SIZE_1_2);
        assert_eq!(
            plugin_vtable_size(ABI_MINOR),
            Some(size_of::<PluginVtable>())
        );
    }

    /// The type name of a field, given a (non-capturing) accessor of it.
    fn field_type<S, T>(_: for<'a> fn(&'a S) -> &'a T) -> &'static str {
        std::any::type_name::<T>()
    }

    #[test]
    fn each_plugin_entry_signature_is_its_fields_type() {
        let actual: Vec<(&str, &str)> = vec![
            ("initialize", field_type(|v: &PluginVtable| &v.initialize)),
            ("init", field_type(|v: &PluginVtable| &v.init)),
            ("handle_call", field_type(|v: &PluginVtable| &v.handle_call)),
            ("handle_cast", field_type(|v: &PluginVtable| &v.handle_cast)),
            ("handle_info", field_type(|v: &PluginVtable| &v.handle_info)),
            (
                "handle_continue",
                field_type(|v: &PluginVtable| &v.handle_continue),
            ),
            ("terminate", field_type(|v: &PluginVtable| &v.terminate)),
            (
                "encode_state",
                field_type(|v: &PluginVtable| &v.encode_state),
            ),
            (
                "restore_state",
                field_type(|v: &PluginVtable| &v.restore_state),
            ),
            ("code_change", field_type(|v: &PluginVtable| &v.code_change)),
            (
                "downgrade_state",
                field_type(|v: &PluginVtable| &v.downgrade_state),
            ),
            (
                "drop_instance",
                field_type(|v: &PluginVtable| &v.drop_instance),
            ),
            ("health", field_type(|v: &PluginVtable| &v.health)),
            (
                "format_status",
                field_type(|v: &PluginVtable| &v.format_status),
            ),
        ];
        let declared: Vec<(&str, &str)> = PLUGIN_VTABLE_SIGNATURES
            .iter()
            .map(|entry| (entry.field, entry.signature))
            .collect();
        assert_eq!(declared, actual);
        // Every field is listed, in order: the last one ends the struct.
        assert_eq!(
            PLUGIN_VTABLE_SIGNATURES.len() * size_of::<usize>(),
            size_of::<PluginVtable>()
        );
    }

    #[test]
    fn each_host_entry_signature_is_its_fields_type() {
        let actual: Vec<(&str, &str)> = vec![
            ("output", field_type(|v: &HostVtable| &v.output)),
            ("log", field_type(|v: &HostVtable| &v.log)),
            ("send", field_type(|v: &HostVtable| &v.send)),
            ("call", field_type(|v: &HostVtable| &v.call)),
            ("send_after", field_type(|v: &HostVtable| &v.send_after)),
            ("cancel_timer", field_type(|v: &HostVtable| &v.cancel_timer)),
            ("reply", field_type(|v: &HostVtable| &v.reply)),
            ("self_name", field_type(|v: &HostVtable| &v.self_name)),
            ("hosts", field_type(|v: &HostVtable| &v.hosts)),
            (
                "register_global",
                field_type(|v: &HostVtable| &v.register_global),
            ),
            ("monitor", field_type(|v: &HostVtable| &v.monitor)),
            (
                "monitor_hosts",
                field_type(|v: &HostVtable| &v.monitor_hosts),
            ),
        ];
        let declared: Vec<(&str, &str)> = HOST_VTABLE_SIGNATURES
            .iter()
            .map(|entry| (entry.field, entry.signature))
            .collect();
        assert_eq!(declared, actual);
        assert_eq!(
            8 + HOST_VTABLE_SIGNATURES.len() * size_of::<usize>(),
            size_of::<HostVtable>()
        );
    }

    /// The case: a `handle_cast` that took other arguments, with the same layout,
    /// must carry another fingerprint.
    #[test]
    fn another_signature_with_the_same_layout_changes_the_fingerprint() {
        let mut altered = PLUGIN_VTABLE_SIGNATURES.to_vec();
        let handle_cast = altered
            .iter_mut()
            .find(|entry| entry.field == "handle_cast")
            .unwrap();
        handle_cast.signature = "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes, *mut core::ffi::c_void) -> u32";
        let altered = fingerprint_with(ABI_MINOR, &altered, HOST_VTABLE_SIGNATURES);
        assert!(altered.is_some());
        assert_ne!(altered, Some(LAYOUT_FINGERPRINT));
        let mut altered_host = HOST_VTABLE_SIGNATURES.to_vec();
        altered_host[0].signature =
            "unsafe extern \"C\" fn(*mut core::ffi::c_void, graft_plugin::abi::Bytes)";
        assert_ne!(
            fingerprint_with(ABI_MINOR, PLUGIN_VTABLE_SIGNATURES, &altered_host),
            Some(LAYOUT_FINGERPRINT)
        );
        // Unchanged texts give the same value.
        assert_eq!(
            fingerprint_with(ABI_MINOR, PLUGIN_VTABLE_SIGNATURES, HOST_VTABLE_SIGNATURES),
            Some(LAYOUT_FINGERPRINT)
        );
    }

    #[test]
    fn entry_symbol_carries_the_abi_major() {
        let name = std::str::from_utf8(&ENTRY_SYMBOL[..ENTRY_SYMBOL.len() - 1]).unwrap();
        assert_eq!(name, format!("graft_plugin_v{ABI_MAJOR}"));
    }

    #[test]
    fn empty_bytes_read_as_an_empty_slice() {
        // SAFETY: EMPTY has length zero, which `as_slice` handles without reading.
        assert!(unsafe { Bytes::EMPTY.as_slice() }.is_empty());
    }
}
