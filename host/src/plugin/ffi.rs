//! The host side of the C ABI: `dlopen`, the header read, every call into plugin code, and
//! the host callbacks plugins call back into.
//!
//! **Architecture Invariant:** this is the only module of the host that calls into plugin
//! code through raw pointers. The host's other `unsafe` is a few libc calls about its own
//! process (`process.rs`: signal disposition, `malloc_trim`; `isolation/worker.rs`:
//! `prctl`; `isolation/wire.rs`: `recvmsg` of a file descriptor) and handing a checked
//! vtable to this module (`plugin.rs`), each with its `// SAFETY:` comment.
//!
//! Invariants this module keeps:
//! - A [`PluginCode`] owns the open library *and* the copy of its vtable; every function
//!   pointer called comes from that vtable, so the library is open whenever one is called.
//! - The header is range-checked against the library's own mappings (`/proc/self/maps`)
//!   before any field is read, and strings are capped, so a corrupt header is an error,
//!   not a wild read.
//! - Every host callback catches its own panics (a panic unwinding out of `extern "C"`
//!   aborts the process) and only copies from the borrowed slices it is given.
//! - A [`CallContext`] lives on the stack of the call it is passed to; plugins only use
//!   it during that call. `initialize` has no context: a message a plugin hands to
//!   `output` with a null `ctx` while it runs is its reason for failing (kept per thread).

use super::header::HeaderFields;
use super::{HostServices, Outputs, PluginIdentity, SendKind, ServiceError};
use graft_plugin::abi::{self, Bytes, HostVtable, PluginHeader, PluginVtable, SinkFn};
use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};
use std::ffi::c_void;
use std::mem::size_of;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;
use std::ptr::{self, NonNull};
use std::time::Duration;

/// Longest string accepted from a header.
const MAX_HEADER_STRING: usize = 1024;

/// Why the header could not be read (before any semantic check).
#[derive(Debug)]
pub(super) enum HeaderReadError {
    MissingSymbol(String),
    OutOfImage(&'static str),
    TooSmall(u32),
}

/// An open plugin library and the vtable copied from its checked header.
pub(super) struct PluginCode {
    vtable: PluginVtable,
    library: Option<Library>,
}

/// An instance created by the plugin; only its own plugin's vtable may use it.
pub(super) struct InstanceHandle(NonNull<c_void>);

// SAFETY: the instance is the plugin's `GenServer` value, which the trait requires to be
// `Send`; the host uses it from one thread at a time (`&mut` access through `Instance`).
unsafe impl Send for InstanceHandle {}

/// Address ranges the file at `path` is mapped at in this process.
fn mapped_ranges(path: &Path) -> Vec<(usize, usize)> {
    let Ok(maps) = std::fs::read_to_string("/proc/self/maps") else {
        return Vec::new();
    };
    let needle = path.to_string_lossy();
    maps.lines()
        .filter(|line| line.contains(needle.as_ref()))
        .filter_map(|line| {
            let range = line.split_whitespace().next()?;
            let (start, end) = range.split_once('-')?;
            Some((
                usize::from_str_radix(start, 16).ok()?,
                usize::from_str_radix(end, 16).ok()?,
            ))
        })
        .collect()
}

fn inside(ranges: &[(usize, usize)], address: usize, length: usize) -> bool {
    let Some(end) = address.checked_add(length) else {
        return false;
    };
    ranges
        .iter()
        .any(|&(start, stop)| address >= start && end <= stop)
}

/// Opens the library with `RTLD_NOW | RTLD_LOCAL`, and `RTLD_NODELETE` when `pinned` (a
/// library that can start threads is never unmapped).
pub(super) fn open(path: &Path, pinned: bool) -> Result<Library, String> {
    let flags = RTLD_NOW | RTLD_LOCAL | if pinned { libc::RTLD_NODELETE } else { 0 };
    // SAFETY: loading runs the library's constructors. The bytes were read once, checked
    // against the expected digest when one was given, and written to a fresh private file
    // (`path`) that nothing else writes; running its code is the point of a plugin.
    unsafe { Library::open(Some(path), flags) }.map_err(|error| error.to_string())
}

/// Reads the header of an open library, checking every address against its mappings.
pub(super) fn read_header(
    library: &Library,
    path: &Path,
) -> Result<(HeaderFields, *const PluginVtable), HeaderReadError> {
    let symbol_name = String::from_utf8_lossy(&abi::ENTRY_SYMBOL[..abi::ENTRY_SYMBOL.len() - 1]);
    // SAFETY: we only take the symbol's address (a data symbol); nothing is called, and the
    // address is range-checked below before it is read.
    let header: *const PluginHeader =
        match unsafe { library.get::<*const PluginHeader>(abi::ENTRY_SYMBOL) } {
            Ok(symbol) => *symbol,
            Err(_) => return Err(HeaderReadError::MissingSymbol(symbol_name.into_owned())),
        };
    let ranges = mapped_ranges(path);
    let prefix = size_of::<u64>() + size_of::<u32>();
    if !inside(&ranges, header as usize, prefix) {
        return Err(HeaderReadError::OutOfImage("header"));
    }
    // SAFETY: the first 12 bytes at `header` lie inside the library's mapped image (checked
    // above); unaligned reads cope with a misplaced symbol.
    let (magic, header_size) = unsafe {
        (
            ptr::read_unaligned(ptr::addr_of!((*header).magic)),
            ptr::read_unaligned(ptr::addr_of!((*header).header_size)),
        )
    };
    if magic != abi::MAGIC {
        // Report the magic before anything else: the rest is not a header at all.
        return Ok((HeaderFields::only_magic(magic), ptr::null()));
    }
    if (header_size as usize) < size_of::<PluginHeader>() {
        return Err(HeaderReadError::TooSmall(header_size));
    }
    if !inside(&ranges, header as usize, size_of::<PluginHeader>()) {
        return Err(HeaderReadError::OutOfImage("header"));
    }
    // SAFETY: the whole header lies inside the mapped image (checked above).
    let raw = unsafe { ptr::read_unaligned(header) };
    let read_string = |bytes: Bytes, field: &'static str| -> Result<Vec<u8>, HeaderReadError> {
        if bytes.len > MAX_HEADER_STRING || !inside(&ranges, bytes.ptr as usize, bytes.len) {
            return Err(HeaderReadError::OutOfImage(field));
        }
        // SAFETY: `ptr..ptr+len` lies inside the mapped image (checked above) and is copied
        // at once into host memory.
        Ok(unsafe { bytes.as_slice() }.to_vec())
    };
    let fields = HeaderFields {
        magic,
        abi_major: raw.abi_major,
        abi_minor: raw.abi_minor,
        layout_fingerprint: raw.layout_fingerprint,
        panic_unwind: raw.panic_unwind,
        vtable_size: raw.vtable_size,
        name: read_string(raw.name, "name")?,
        version: read_string(raw.version, "version")?,
        api_version: read_string(raw.api_version, "api_version")?,
        target: read_string(raw.target, "target")?,
    };
    let vtable_length = (raw.vtable_size as usize).min(size_of::<PluginVtable>());
    if !inside(&ranges, raw.vtable as usize, vtable_length) {
        return Err(HeaderReadError::OutOfImage("vtable"));
    }
    Ok((fields, raw.vtable))
}

impl PluginCode {
    /// Takes ownership of an open library whose header passed every check, copying the
    /// entries of its vtable that lie wholly inside the `vtable_size` it declared; the
    /// entries after them (added by a newer ABI minor than the plugin's) read as `None`,
    /// not implemented. Fails when an ABI 1.0 entry is null.
    ///
    /// # Safety
    /// `vtable` must come from [`read_header`] on this `library` (which range-checked
    /// `min(vtable_size, size_of::<PluginVtable>())` bytes at it), after the caller checked
    /// magic, ABI major/minor, layout fingerprint and `vtable_size >= PLUGIN_VTABLE_SIZE_1_0`.
    pub(super) unsafe fn new(
        library: Library,
        vtable: *const PluginVtable,
        vtable_size: u32,
    ) -> Result<PluginCode, String> {
        let word = size_of::<usize>();
        let declared = (vtable_size as usize).min(size_of::<PluginVtable>()) / word * word;
        if declared < abi::PLUGIN_VTABLE_SIZE_1_0 {
            return Err(format!(
                "vtable is {vtable_size} bytes, ABI 1.0 needs {}",
                abi::PLUGIN_VTABLE_SIZE_1_0
            ));
        }
        // SAFETY: `declared` bytes at `vtable` lie inside the mapped image (range-checked
        // by `read_header`); unaligned reads cope with a misplaced table.
        let words: Vec<usize> = (0..abi::PLUGIN_VTABLE_SIZE_1_0 / word)
            .map(|index| unsafe { ptr::read_unaligned((vtable as *const usize).add(index)) })
            .collect();
        if let Some(index) = words.iter().position(|entry| *entry == 0) {
            let field = abi::PLUGIN_VTABLE_SIGNATURES
                .get(index)
                .map_or("?", |entry| entry.field);
            return Err(format!("the ABI 1.0 vtable entry `{field}` is null"));
        }
        let mut table = std::mem::MaybeUninit::<PluginVtable>::zeroed();
        // SAFETY: copies `declared` readable bytes (see above) into the zeroed table, which
        // is `size_of::<PluginVtable>() >= declared` bytes long; the two do not overlap.
        unsafe {
            ptr::copy_nonoverlapping(vtable as *const u8, table.as_mut_ptr() as *mut u8, declared)
        };
        // SAFETY: the ABI 1.0 entries (non-optional fn pointers) were copied and are non-null
        // (checked above); every later entry is an `Option` of a fn pointer, for which both
        // the copied bytes and the zeroes left after `declared` (`None`) are valid.
        let vtable = unsafe { table.assume_init() };
        Ok(PluginCode {
            vtable,
            library: Some(library),
        })
    }

    /// Whether the plugin's vtable has `health` (ABI 1.1).
    pub(super) fn has_health(&self) -> bool {
        self.vtable.health.is_some()
    }

    /// Whether the plugin's vtable has `format_status` (ABI 1.1).
    pub(super) fn has_format_status(&self) -> bool {
        self.vtable.format_status.is_some()
    }

    /// Closes the library (`dlclose`). The vtable must not be used afterwards; `Drop`
    /// of the owner guarantees that.
    pub(super) fn close(&mut self) -> Result<(), String> {
        match self.library.take() {
            Some(library) => library.close().map_err(|error| error.to_string()),
            None => Ok(()),
        }
    }

    /// Runs the plugin's `initialize`: its status, and the reason it gave when it failed
    /// (an `OUTPUT_MESSAGE` handed to `output` with a null `ctx` during the call).
    pub(super) fn initialize(&self, max_log_level: u32) -> (u32, Option<String>) {
        collecting_initialize_message(|| {
            // SAFETY: the vtable belongs to the open library (see type invariant);
            // HOST_VTABLE is a static that outlives the library.
            unsafe { (self.vtable.initialize)(&HOST_VTABLE, max_log_level) }
        })
    }

    pub(super) fn init(
        &self,
        context: &mut CallContext<'_>,
        args: &[u8],
    ) -> (u32, Option<InstanceHandle>) {
        let mut instance: *mut c_void = ptr::null_mut();
        // SAFETY: the library is open; `context` and `args` outlive the call; `instance` is
        // a valid place for the plugin to write the handle to.
        let status =
            unsafe { (self.vtable.init)(context.as_raw(), Bytes::from_slice(args), &mut instance) };
        (status, NonNull::new(instance).map(InstanceHandle))
    }

    pub(super) fn restore_state(
        &self,
        context: &mut CallContext<'_>,
        state: &[u8],
    ) -> (u32, Option<InstanceHandle>) {
        let mut instance: *mut c_void = ptr::null_mut();
        // SAFETY: as in `init`.
        let status = unsafe {
            (self.vtable.restore_state)(context.as_raw(), Bytes::from_slice(state), &mut instance)
        };
        (status, NonNull::new(instance).map(InstanceHandle))
    }

    pub(super) fn code_change(
        &self,
        context: &mut CallContext<'_>,
        from_version: &str,
        state: &[u8],
        extra: &[u8],
    ) -> (u32, Option<InstanceHandle>) {
        let mut instance: *mut c_void = ptr::null_mut();
        // SAFETY: as in `init`.
        let status = unsafe {
            (self.vtable.code_change)(
                context.as_raw(),
                Bytes::from_slice(from_version.as_bytes()),
                Bytes::from_slice(state),
                Bytes::from_slice(extra),
                &mut instance,
            )
        };
        (status, NonNull::new(instance).map(InstanceHandle))
    }

    pub(super) fn handle_call(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        request: &[u8],
        reply_token: u64,
    ) -> u32 {
        // SAFETY: `instance` was created by this plugin and is borrowed mutably, so no other
        // call uses it; the library is open; borrowed inputs outlive the call.
        unsafe {
            (self.vtable.handle_call)(
                instance.0.as_ptr(),
                context.as_raw(),
                Bytes::from_slice(request),
                reply_token,
            )
        }
    }

    pub(super) fn handle_cast(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        message: &[u8],
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe {
            (self.vtable.handle_cast)(
                instance.0.as_ptr(),
                context.as_raw(),
                Bytes::from_slice(message),
            )
        }
    }

    pub(super) fn handle_info(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        kind: u32,
        message: &[u8],
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe {
            (self.vtable.handle_info)(
                instance.0.as_ptr(),
                context.as_raw(),
                kind,
                Bytes::from_slice(message),
            )
        }
    }

    pub(super) fn handle_continue(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        argument: &[u8],
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe {
            (self.vtable.handle_continue)(
                instance.0.as_ptr(),
                context.as_raw(),
                Bytes::from_slice(argument),
            )
        }
    }

    pub(super) fn terminate(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        reason: &str,
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe {
            (self.vtable.terminate)(
                instance.0.as_ptr(),
                context.as_raw(),
                Bytes::from_slice(reason.as_bytes()),
            )
        }
    }

    pub(super) fn encode_state(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe { (self.vtable.encode_state)(instance.0.as_ptr(), context.as_raw()) }
    }

    pub(super) fn downgrade_state(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
        to_version: &str,
        extra: &[u8],
    ) -> u32 {
        // SAFETY: as in `handle_call`.
        unsafe {
            (self.vtable.downgrade_state)(
                instance.0.as_ptr(),
                context.as_raw(),
                Bytes::from_slice(to_version.as_bytes()),
                Bytes::from_slice(extra),
            )
        }
    }

    /// Runs `health`; `None` when the plugin's vtable lacks it (ABI 1.0).
    pub(super) fn health(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
    ) -> Option<u32> {
        let health = self.vtable.health?;
        // SAFETY: as in `handle_call`; the entry was inside the vtable the plugin declared.
        Some(unsafe { health(instance.0.as_ptr(), context.as_raw()) })
    }

    /// Runs `format_status`; `None` when the plugin's vtable lacks it (ABI 1.0).
    pub(super) fn format_status(
        &self,
        instance: &mut InstanceHandle,
        context: &mut CallContext<'_>,
    ) -> Option<u32> {
        let format_status = self.vtable.format_status?;
        // SAFETY: as in `handle_call`; the entry was inside the vtable the plugin declared.
        Some(unsafe { format_status(instance.0.as_ptr(), context.as_raw()) })
    }

    pub(super) fn drop_instance(&self, instance: InstanceHandle) -> u32 {
        // SAFETY: the handle is consumed, so it is dropped exactly once, by its own plugin,
        // while the library is open.
        unsafe { (self.vtable.drop_instance)(instance.0.as_ptr()) }
    }
}

/// What a plugin call may reach while it runs: the services, and where outputs go.
pub(super) struct CallContext<'a> {
    pub services: &'a dyn HostServices,
    pub identity: &'a PluginIdentity,
    pub outputs: Outputs,
}

impl<'a> CallContext<'a> {
    pub fn new(services: &'a dyn HostServices, identity: &'a PluginIdentity) -> CallContext<'a> {
        CallContext {
            services,
            identity,
            outputs: Outputs::default(),
        }
    }

    fn as_raw(&mut self) -> *mut c_void {
        self as *mut CallContext<'a> as *mut c_void
    }
}

/// The host vtable handed to every plugin; `size` tells plugins which entries it has.
static HOST_VTABLE: HostVtable = HostVtable {
    size: size_of::<HostVtable>() as u32,
    abi_minor: abi::ABI_MINOR as u32,
    output: host_output,
    log: host_log,
    send: host_send,
    call: host_call,
    send_after: host_send_after,
    cancel_timer: host_cancel_timer,
    reply: host_reply,
    self_name: host_self_name,
    hosts: Some(host_hosts),
    register_global: Some(host_register_global),
    monitor: Some(host_monitor),
    monitor_hosts: Some(host_monitor_hosts),
};

/// Runs a callback body with panics caught; a host bug must not abort through the plugin.
fn guarded<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|_| {
        tracing::error!("a host callback panicked; the plugin sees a failure");
        fallback
    })
}

/// # Safety
/// `ctx` must be null or a `CallContext` passed to the plugin call in progress on this thread.
unsafe fn context<'a>(ctx: *mut c_void) -> Option<&'a mut CallContext<'a>> {
    // SAFETY: per the contract; the context lives on the stack of the host frame that is
    // waiting for this plugin call to return, and nothing else touches it meanwhile.
    unsafe { (ctx as *mut CallContext<'a>).as_mut() }
}

/// # Safety
/// `data` must be valid for reads for the duration of the host callback.
unsafe fn slice<'a>(data: Bytes) -> &'a [u8] {
    // SAFETY: per the contract (the plugin borrows it to us for this call).
    unsafe { data.as_slice() }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn service_code(result: Result<(), ServiceError>) -> u32 {
    match result {
        Ok(()) => abi::SERVICE_OK,
        Err(error) => error.code(),
    }
}

/// Longest reason for a failed `initialize` that is kept (the rest is cut).
const MAX_INITIALIZE_MESSAGE: usize = 64 * 1024;

thread_local! {
    /// While a plugin's `initialize` runs on this thread: `Some`, holding the message it
    /// handed to `output` with a null `ctx` (there is no call context yet), if any.
    static INITIALIZE_MESSAGE: std::cell::RefCell<Option<Option<String>>> =
        const { std::cell::RefCell::new(None) };
}

/// Runs `initialize` (the body) collecting the reason a failing plugin gives.
fn collecting_initialize_message(body: impl FnOnce() -> u32) -> (u32, Option<String>) {
    INITIALIZE_MESSAGE.with(|slot| *slot.borrow_mut() = Some(None));
    let status = body();
    let message = INITIALIZE_MESSAGE.with(|slot| slot.borrow_mut().take().flatten());
    (status, message)
}

unsafe extern "C" fn host_output(ctx: *mut c_void, kind: u32, data: Bytes) {
    guarded((), || {
        // SAFETY: the plugin passes the ctx of the call in progress (or null) and a
        // borrowed slice.
        let (context, data) = (unsafe { context(ctx) }, unsafe { slice(data) });
        let Some(context) = context else {
            // No call in progress: during `initialize`, its reason for failing.
            if kind == abi::OUTPUT_MESSAGE {
                INITIALIZE_MESSAGE.with(|slot| {
                    if let Ok(mut slot) = slot.try_borrow_mut()
                        && let Some(message) = slot.as_mut()
                    {
                        let kept = &data[..data.len().min(MAX_INITIALIZE_MESSAGE)];
                        *message = Some(text(kept));
                    }
                });
            }
            return;
        };
        context.outputs.record(kind, data);
    })
}

unsafe extern "C" fn host_log(ctx: *mut c_void, level: u32, target: Bytes, message: Bytes) {
    guarded((), || {
        // SAFETY: as in `host_output`; `ctx` may be null outside a call.
        let (context, target, message) = unsafe { (context(ctx), slice(target), slice(message)) };
        let origin = context.map(|context| (context.identity, context.services.actor_name()));
        super::emit_plugin_log(origin, level, &text(target), &text(message));
    })
}

unsafe extern "C" fn host_send(ctx: *mut c_void, kind: u32, to: Bytes, message: Bytes) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let (Some(context), to, message) =
            (unsafe { context(ctx) }, unsafe { slice(to) }, unsafe {
                slice(message)
            })
        else {
            return abi::SERVICE_UNAVAILABLE;
        };
        let kind = if kind == abi::SEND_CAST {
            SendKind::Cast
        } else {
            SendKind::Info
        };
        service_code(context.services.send(&text(to), kind, message.to_vec()))
    })
}

unsafe extern "C" fn host_call(
    ctx: *mut c_void,
    to: Bytes,
    message: Bytes,
    timeout_ms: u64,
    sink: *mut c_void,
    sink_fn: SinkFn,
) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let (Some(context), to, message) =
            (unsafe { context(ctx) }, unsafe { slice(to) }, unsafe {
                slice(message)
            })
        else {
            return abi::SERVICE_UNAVAILABLE;
        };
        let result = context.services.call(
            &text(to),
            message.to_vec(),
            Duration::from_millis(timeout_ms),
        );
        let (code, bytes) = match result {
            Ok(reply) => (abi::SERVICE_OK, reply),
            Err(error) => (error.code(), error.to_string().into_bytes()),
        };
        // SAFETY: `sink_fn` and `sink` are the plugin's own buffer writer, valid for this
        // call; `bytes` outlives it.
        unsafe { sink_fn(sink, Bytes::from_slice(&bytes)) };
        code
    })
}

/// Hands `result` to the plugin's sink (the value, or the error's text) and returns its
/// `SERVICE_*` code.
///
/// # Safety
/// `sink_fn` and `sink` must be the plugin's buffer writer for the call in progress.
unsafe fn answer_to_sink(
    result: Result<Vec<u8>, ServiceError>,
    sink: *mut c_void,
    sink_fn: SinkFn,
) -> u32 {
    let (code, bytes) = match result {
        Ok(bytes) => (abi::SERVICE_OK, bytes),
        Err(error) => (error.code(), error.to_string().into_bytes()),
    };
    // SAFETY: per the contract; `bytes` outlives the call, which copies them.
    unsafe { sink_fn(sink, Bytes::from_slice(&bytes)) };
    code
}

unsafe extern "C" fn host_hosts(ctx: *mut c_void, sink: *mut c_void, sink_fn: SinkFn) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let Some(context) = (unsafe { context(ctx) }) else {
            return abi::SERVICE_UNAVAILABLE;
        };
        let result = context.services.hosts().and_then(|hosts| {
            graft_plugin::codec::encode(&hosts)
                .map_err(|_| ServiceError::Unavailable("hosts (not encodable)"))
        });
        // SAFETY: the plugin's own sink for this call.
        unsafe { answer_to_sink(result, sink, sink_fn) }
    })
}

unsafe extern "C" fn host_register_global(
    ctx: *mut c_void,
    sink: *mut c_void,
    sink_fn: SinkFn,
) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let Some(context) = (unsafe { context(ctx) }) else {
            return abi::SERVICE_UNAVAILABLE;
        };
        let result = context.services.register_global().map(|()| Vec::new());
        // SAFETY: the plugin's own sink for this call.
        unsafe { answer_to_sink(result, sink, sink_fn) }
    })
}

unsafe extern "C" fn host_monitor(ctx: *mut c_void, to: Bytes) -> u64 {
    guarded(0, || {
        // SAFETY: as in `host_output`.
        let (Some(context), to) = (unsafe { context(ctx) }, unsafe { slice(to) }) else {
            return 0;
        };
        context.services.monitor(&text(to)).unwrap_or(0)
    })
}

unsafe extern "C" fn host_monitor_hosts(ctx: *mut c_void, on: u32) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let Some(context) = (unsafe { context(ctx) }) else {
            return abi::SERVICE_UNAVAILABLE;
        };
        service_code(context.services.monitor_hosts(on == 1))
    })
}

unsafe extern "C" fn host_send_after(
    ctx: *mut c_void,
    delay_ms: u64,
    repeat: u32,
    message: Bytes,
) -> u64 {
    guarded(0, || {
        // SAFETY: as in `host_output`.
        let (Some(context), message) = (unsafe { context(ctx) }, unsafe { slice(message) }) else {
            return 0;
        };
        context
            .services
            .start_timer(
                Duration::from_millis(delay_ms),
                repeat == 1,
                message.to_vec(),
            )
            .unwrap_or(0)
    })
}

unsafe extern "C" fn host_cancel_timer(ctx: *mut c_void, timer: u64) -> u32 {
    guarded(0, || {
        // SAFETY: as in `host_output`.
        let Some(context) = (unsafe { context(ctx) }) else {
            return 0;
        };
        u32::from(context.services.cancel_timer(timer))
    })
}

unsafe extern "C" fn host_reply(ctx: *mut c_void, token: u64, message: Bytes) -> u32 {
    guarded(abi::SERVICE_UNAVAILABLE, || {
        // SAFETY: as in `host_output`.
        let (Some(context), message) = (unsafe { context(ctx) }, unsafe { slice(message) }) else {
            return abi::SERVICE_UNAVAILABLE;
        };
        service_code(context.services.reply(token, message.to_vec()))
    })
}

unsafe extern "C" fn host_self_name(ctx: *mut c_void, sink: *mut c_void, sink_fn: SinkFn) {
    guarded((), || {
        // SAFETY: as in `host_output`.
        let Some(context) = (unsafe { context(ctx) }) else {
            return;
        };
        let name = context.services.actor_name().to_owned();
        // SAFETY: the plugin's own buffer writer, valid for this call.
        unsafe { sink_fn(sink, Bytes::from_slice(name.as_bytes())) };
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn output_without_context(message: &str) {
        // SAFETY: a null `ctx` and a slice borrowed for the call, as a plugin passes them.
        unsafe {
            host_output(
                ptr::null_mut(),
                abi::OUTPUT_MESSAGE,
                Bytes::from_slice(message.as_bytes()),
            )
        };
    }

    #[test]
    fn the_reason_a_failing_initialize_gives_is_collected() {
        let outcome = collecting_initialize_message(|| {
            output_without_context("host vtable is 24 bytes, this plugin needs at least 72");
            abi::STATUS_ERROR
        });
        assert_eq!(
            outcome,
            (
                abi::STATUS_ERROR,
                Some("host vtable is 24 bytes, this plugin needs at least 72".to_owned())
            )
        );
        // Outside `initialize` a message without a context goes nowhere, and does not leak
        // into the next `initialize`.
        output_without_context("stray");
        assert_eq!(
            collecting_initialize_message(|| abi::STATUS_OK),
            (abi::STATUS_OK, None)
        );
    }
}
