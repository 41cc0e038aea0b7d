//! The plugin side of the ABI: the `extern "C"` shims [`export_plugin!`](crate::export_plugin)
//! wires up, and the raw calls into the host's vtable. Not for plugin authors.
//!
//! **Invariants.** Every shim runs its whole body — decode, the author's callback, encode,
//! and the drop of anything it made — inside `catch_unwind`, so no panic ever unwinds out
//! of an `extern "C"` function (which would abort the host). Failures are handed to the host
//! as `OUTPUT_MESSAGE` plus a `STATUS_*` code. No output is returned by pointer: it is
//! passed to `HostVtable::output`, which copies it before returning.
//!
//! What is tricky: the host vtable pointer arrives once, in `initialize`, and is kept in a
//! static of this (per-library) copy. The current call's `ctx` is kept in a const-initialised
//! `Cell` thread-local so that `log`/`tracing` records emitted deep inside author code reach
//! the right actor; a `Cell` of a pointer has no destructor, so it never pins the library.
//!
//! ABI evolution: the host may be older than this crate. `initialize` refuses a host vtable
//! smaller than ABI 1.0's; a host entry added after 1.0 (the four cluster entries of 1.2)
//! is used only through [`host_1_2`], which checks that it lies inside `HostVtable::size`
//! and is `Some` (else the service is unavailable), as the host does for the plugin's
//! `health` and `format_status` (ABI 1.1) against `PluginHeader::vtable_size`.

use crate::abi::{self, Bytes, HostVtable, PluginHeader, PluginVtable};
use crate::{
    CallResult, Context, Down, Error, Exit, Flow, GenServer, HostEvent, Info, Payload, ReplyTo,
};
use crate::{StopReason, codec, logging};
use std::any::Any;
use std::cell::Cell;
use std::ffi::c_void;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

/// The host vtable, set once by `initialize`.
static HOST: AtomicPtr<HostVtable> = AtomicPtr::new(ptr::null_mut());

thread_local! {
    /// The `ctx` of the host call in progress on this thread (null outside calls).
    static CURRENT: Cell<*mut c_void> = const { Cell::new(ptr::null_mut()) };
}

/// The host's opaque pointer for the call in progress.
#[derive(Clone, Copy)]
pub(crate) struct RawContext(*mut c_void);

fn host() -> Option<&'static HostVtable> {
    let host = HOST.load(Ordering::Acquire);
    // SAFETY: `HOST` is only ever set (in `initialize`) to the host's static vtable, which
    // lives for the rest of the process; null means not initialised yet.
    unsafe { host.as_ref() }
}

pub(crate) fn current_context() -> *mut c_void {
    CURRENT.with(Cell::get)
}

pub(crate) fn host_output(ctx: RawContext, kind: u32, data: &[u8]) {
    if let Some(host) = host() {
        // SAFETY: `ctx` is the pointer the host passed to the call in progress on this
        // thread (a `RawContext` never outlives its call), and `data` is borrowed for the
        // duration of the callback, which copies it.
        unsafe { (host.output)(ctx.0, kind, Bytes::from_slice(data)) }
    }
}

pub(crate) fn host_log(ctx: *mut c_void, level: u32, target: &str, message: &str) {
    if let Some(host) = host() {
        // SAFETY: `ctx` is null or the pointer of the call in progress on this thread (see
        // `CURRENT`); the strings are borrowed for the call and copied by the host.
        unsafe {
            (host.log)(
                ctx,
                level,
                Bytes::from_slice(target.as_bytes()),
                Bytes::from_slice(message.as_bytes()),
            )
        }
    }
}

pub(crate) fn host_send(ctx: RawContext, kind: u32, to: &str, message: &[u8]) -> u32 {
    let Some(host) = host() else {
        return abi::SERVICE_UNAVAILABLE;
    };
    // SAFETY: as in `host_output`: a live call's `ctx` and borrowed slices.
    unsafe {
        (host.send)(
            ctx.0,
            kind,
            Bytes::from_slice(to.as_bytes()),
            Bytes::from_slice(message),
        )
    }
}

unsafe extern "C" fn copy_into_vec(sink: *mut c_void, data: Bytes) {
    // SAFETY: `sink` is the `&mut Vec<u8>` passed by `host_call`/`host_self_name`, alive for
    // the duration of the host call that invokes this; `data` is valid for this call.
    unsafe {
        let buffer = &mut *(sink as *mut Vec<u8>);
        buffer.extend_from_slice(data.as_slice());
    }
}

pub(crate) fn host_call(
    ctx: RawContext,
    to: &str,
    message: &[u8],
    timeout_ms: u64,
) -> (u32, Vec<u8>) {
    let Some(host) = host() else {
        return (abi::SERVICE_UNAVAILABLE, b"no host".to_vec());
    };
    let mut reply = Vec::new();
    // SAFETY: a live call's `ctx`, borrowed slices, and a sink pointing at `reply`, which
    // outlives the host call; `copy_into_vec` matches the sink's type.
    let code = unsafe {
        (host.call)(
            ctx.0,
            Bytes::from_slice(to.as_bytes()),
            Bytes::from_slice(message),
            timeout_ms,
            &mut reply as *mut Vec<u8> as *mut c_void,
            copy_into_vec,
        )
    };
    (code, reply)
}

pub(crate) fn host_send_after(ctx: RawContext, delay_ms: u64, repeat: bool, message: &[u8]) -> u64 {
    let Some(host) = host() else { return 0 };
    // SAFETY: a live call's `ctx` and a borrowed slice.
    unsafe {
        (host.send_after)(
            ctx.0,
            delay_ms,
            u32::from(repeat),
            Bytes::from_slice(message),
        )
    }
}

pub(crate) fn host_cancel_timer(ctx: RawContext, timer: u64) -> bool {
    let Some(host) = host() else { return false };
    // SAFETY: a live call's `ctx`.
    unsafe { (host.cancel_timer)(ctx.0, timer) == 1 }
}

pub(crate) fn host_reply(ctx: RawContext, token: u64, message: &[u8]) -> u32 {
    let Some(host) = host() else {
        return abi::SERVICE_UNAVAILABLE;
    };
    // SAFETY: a live call's `ctx` and a borrowed slice.
    unsafe { (host.reply)(ctx.0, token, Bytes::from_slice(message)) }
}

pub(crate) fn host_self_name(ctx: RawContext) -> String {
    let Some(host) = host() else {
        return String::new();
    };
    let mut name = Vec::new();
    // SAFETY: a live call's `ctx` and a sink pointing at `name`, which outlives the call.
    unsafe {
        (host.self_name)(
            ctx.0,
            &mut name as *mut Vec<u8> as *mut c_void,
            copy_into_vec,
        )
    };
    String::from_utf8_lossy(&name).into_owned()
}

/// An ABI 1.2 host entry, read only when the host's declared vtable holds it; `None` from
/// an older host (or one that leaves it out).
fn host_1_2<T>(entry: impl FnOnce(&HostVtable) -> Option<T>) -> Option<T> {
    let host = host()?;
    if (host.size as usize) < abi::HOST_VTABLE_SIZE_1_2 {
        return None;
    }
    entry(host)
}

const OLDER_HOST: &str = "the host's ABI is older than 1.2";

pub(crate) fn host_hosts(ctx: RawContext) -> (u32, Vec<u8>) {
    let Some(hosts) = host_1_2(|host| host.hosts) else {
        return (abi::SERVICE_UNAVAILABLE, OLDER_HOST.as_bytes().to_vec());
    };
    let mut out = Vec::new();
    // SAFETY: a live call's `ctx` and a sink pointing at `out`, which outlives the call;
    // the entry lies inside the vtable the host declared (checked by `host_1_2`).
    let code = unsafe {
        hosts(
            ctx.0,
            &mut out as *mut Vec<u8> as *mut c_void,
            copy_into_vec,
        )
    };
    (code, out)
}

pub(crate) fn host_register_global(ctx: RawContext) -> (u32, Vec<u8>) {
    let Some(register) = host_1_2(|host| host.register_global) else {
        return (abi::SERVICE_UNAVAILABLE, OLDER_HOST.as_bytes().to_vec());
    };
    let mut out = Vec::new();
    // SAFETY: as in `host_hosts`.
    let code = unsafe {
        register(
            ctx.0,
            &mut out as *mut Vec<u8> as *mut c_void,
            copy_into_vec,
        )
    };
    (code, out)
}

pub(crate) fn host_monitor(ctx: RawContext, to: &str) -> Option<u64> {
    let monitor = host_1_2(|host| host.monitor)?;
    // SAFETY: a live call's `ctx` and a borrowed slice the host copies; the entry lies
    // inside the declared vtable (checked by `host_1_2`).
    Some(unsafe { monitor(ctx.0, Bytes::from_slice(to.as_bytes())) })
}

pub(crate) fn host_monitor_hosts(ctx: RawContext, on: bool) -> u32 {
    let Some(monitor_hosts) = host_1_2(|host| host.monitor_hosts) else {
        return abi::SERVICE_UNAVAILABLE;
    };
    // SAFETY: a live call's `ctx`; the entry lies inside the declared vtable.
    unsafe { monitor_hosts(ctx.0, u32::from(on)) }
}

/// Why a shim failed, before it is reported to the host.
struct Failure {
    status: u32,
    message: String,
}

impl Failure {
    fn error(error: Error) -> Failure {
        Failure {
            status: abi::STATUS_ERROR,
            message: error.message().to_owned(),
        }
    }

    fn bad_input(what: &str, error: impl std::fmt::Display) -> Failure {
        Failure {
            status: abi::STATUS_BAD_INPUT,
            message: format!("{what} does not decode: {error}"),
        }
    }
}

fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "a non-string panic payload".to_owned()
    }
}

/// Runs a shim body with panics caught and the current context set for logging.
fn guard(ctx: *mut c_void, body: impl FnOnce(RawContext) -> Result<(), Failure>) -> u32 {
    let previous = CURRENT.with(|current| current.replace(ctx));
    let raw = RawContext(ctx);
    let outcome = catch_unwind(AssertUnwindSafe(|| body(raw)));
    let status = match outcome {
        Ok(Ok(())) => abi::STATUS_OK,
        Ok(Err(failure)) => {
            host_output(raw, abi::OUTPUT_MESSAGE, failure.message.as_bytes());
            failure.status
        }
        Err(payload) => {
            let message = panic_message(&*payload);
            // A payload whose drop panics must not unwind out of here either.
            if catch_unwind(AssertUnwindSafe(|| drop(payload))).is_err() {
                logging::forward_panic_in_drop();
            }
            host_output(raw, abi::OUTPUT_MESSAGE, message.as_bytes());
            abi::STATUS_PANIC
        }
    };
    CURRENT.with(|current| current.set(previous));
    status
}

fn decode_input<T: serde::de::DeserializeOwned>(what: &str, bytes: Bytes) -> Result<T, Failure> {
    // SAFETY: the host passes input slices valid for the duration of this call.
    let slice = unsafe { bytes.as_slice() };
    codec::decode(slice).map_err(|error| Failure::bad_input(what, error))
}

fn text_input(bytes: Bytes) -> String {
    // SAFETY: the host passes input slices valid for the duration of this call.
    String::from_utf8_lossy(unsafe { bytes.as_slice() }).into_owned()
}

fn version_input(what: &str, bytes: Bytes) -> Result<semver::Version, Failure> {
    let text = text_input(bytes);
    semver::Version::parse(&text).map_err(|error| Failure::bad_input(what, error))
}

fn output_encoded<T: serde::Serialize + ?Sized>(
    ctx: RawContext,
    kind: u32,
    value: &T,
) -> Result<(), Failure> {
    let bytes = codec::encode(value).map_err(|error| Failure::error(Error::new(error)))?;
    host_output(ctx, kind, &bytes);
    Ok(())
}

fn output_flow(ctx: RawContext, flow: Flow) {
    if let Flow::Stop(reason) = flow {
        host_output(ctx, abi::OUTPUT_STOP, reason.to_string().as_bytes());
    }
}

/// Hands a new instance to the host.
fn store_instance<T: GenServer>(instance: *mut *mut c_void, server: T) {
    let raw = Box::into_raw(Box::new(server)) as *mut c_void;
    // SAFETY: the host passes a valid, writable `*mut *mut c_void` for the handle.
    unsafe { instance.write(raw) };
}

/// # Safety
/// `instance` must be a handle this plugin's `init`/`restore_state`/`code_change` created
/// for `T`, not yet dropped, and not used by any other call at the same time.
unsafe fn server<'a, T: GenServer>(instance: *mut c_void) -> &'a mut T {
    // SAFETY: guaranteed by the caller, per the function contract.
    unsafe { &mut *(instance as *mut T) }
}

unsafe extern "C" fn initialize(host_vtable: *const HostVtable, max_log_level: u32) -> u32 {
    guard(ptr::null_mut(), |_| {
        // SAFETY: the host passes its static vtable (or null, refused below).
        let Some(vtable) = (unsafe { host_vtable.as_ref() }) else {
            return Err(Failure::error(Error::new("host vtable is null")));
        };
        if (vtable.size as usize) < abi::HOST_VTABLE_SIZE_1_0 {
            let message = format!(
                "host vtable is {} bytes, this plugin needs at least {}",
                vtable.size,
                abi::HOST_VTABLE_SIZE_1_0
            );
            // `HOST` stays unset (this host is refused), so `guard` cannot hand the reason
            // over: give it to the host's `output` directly, with a null `ctx`, which a
            // host reads as why `initialize` failed. Only when the vtable holds `output`.
            let output_end = std::mem::offset_of!(HostVtable, output) + size_of::<*const c_void>();
            if vtable.size as usize >= output_end {
                // SAFETY: the host's vtable declares it holds `output` (checked above); the
                // message is borrowed for the call and copied by the host.
                unsafe {
                    (vtable.output)(
                        ptr::null_mut(),
                        abi::OUTPUT_MESSAGE,
                        Bytes::from_slice(message.as_bytes()),
                    )
                }
            }
            return Err(Failure::error(Error::new(message)));
        }
        HOST.store(host_vtable as *mut HostVtable, Ordering::Release);
        logging::install(max_log_level);
        Ok(())
    })
}

unsafe extern "C" fn init<T: GenServer>(
    ctx: *mut c_void,
    args: Bytes,
    instance: *mut *mut c_void,
) -> u32 {
    guard(ctx, |raw| {
        let args: T::Args = decode_input("start arguments", args)?;
        let server = T::init(args, &mut Context::new(raw)).map_err(|error| {
            if error.is_ignore() {
                host_output(raw, abi::OUTPUT_IGNORE, &[]);
            }
            Failure::error(error)
        })?;
        store_instance(instance, server);
        Ok(())
    })
}

unsafe extern "C" fn handle_call<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    request: Bytes,
    reply_token: u64,
) -> u32 {
    guard(ctx, |raw| {
        let request: T::Call = decode_input("call request", request)?;
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        let result = server
            .handle_call(request, ReplyTo(reply_token), &mut Context::new(raw))
            .map_err(Failure::error)?;
        match result {
            CallResult::Reply(reply) => output_encoded(raw, abi::OUTPUT_REPLY, &reply)?,
            CallResult::NoReply => {}
            CallResult::Stop { reason, reply } => {
                if let Some(reply) = reply {
                    output_encoded(raw, abi::OUTPUT_REPLY, &reply)?;
                }
                output_flow(raw, Flow::Stop(reason));
            }
        }
        Ok(())
    })
}

unsafe extern "C" fn handle_cast<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    message: Bytes,
) -> u32 {
    guard(ctx, |raw| {
        let message: T::Cast = decode_input("cast message", message)?;
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        let flow = server
            .handle_cast(message, &mut Context::new(raw))
            .map_err(Failure::error)?;
        output_flow(raw, flow);
        Ok(())
    })
}

unsafe extern "C" fn handle_info<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    kind: u32,
    message: Bytes,
) -> u32 {
    guard(ctx, |raw| {
        if kind == abi::INFO_TIMEOUT {
            // SAFETY: the host passes a live instance of this plugin, one call at a time.
            let server = unsafe { server::<T>(instance) };
            let flow = server
                .handle_timeout(&mut Context::new(raw))
                .map_err(Failure::error)?;
            output_flow(raw, flow);
            return Ok(());
        }
        let info = match kind {
            abi::INFO_DOWN => Info::Down(decode_input::<Down>("down message", message)?),
            abi::INFO_EXIT => Info::Exit(decode_input::<Exit>("exit message", message)?),
            abi::INFO_HOST_UP => Info::HostUp(decode_input::<HostEvent>("host up", message)?),
            abi::INFO_HOST_DOWN => Info::HostDown(decode_input::<HostEvent>("host down", message)?),
            _ => Info::Message(decode_input::<T::Info>("info message", message)?),
        };
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        let flow = server
            .handle_info(info, &mut Context::new(raw))
            .map_err(Failure::error)?;
        output_flow(raw, flow);
        Ok(())
    })
}

unsafe extern "C" fn handle_continue<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    argument: Bytes,
) -> u32 {
    guard(ctx, |raw| {
        let argument: T::Continue = decode_input("continue argument", argument)?;
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        let flow = server
            .handle_continue(argument, &mut Context::new(raw))
            .map_err(Failure::error)?;
        output_flow(raw, flow);
        Ok(())
    })
}

unsafe extern "C" fn terminate<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    reason: Bytes,
) -> u32 {
    guard(ctx, |raw| {
        let reason = StopReason::from_text(&text_input(reason));
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        server.terminate(&reason, &mut Context::new(raw));
        Ok(())
    })
}

unsafe extern "C" fn encode_state<T: GenServer>(instance: *mut c_void, ctx: *mut c_void) -> u32 {
    guard(ctx, |raw| {
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        output_encoded(raw, abi::OUTPUT_STATE, &*server)
    })
}

unsafe extern "C" fn restore_state<T: GenServer>(
    ctx: *mut c_void,
    state: Bytes,
    instance: *mut *mut c_void,
) -> u32 {
    guard(ctx, |_| {
        let server: T = decode_input("state", state)?;
        store_instance(instance, server);
        Ok(())
    })
}

unsafe extern "C" fn code_change<T: GenServer>(
    ctx: *mut c_void,
    from_version: Bytes,
    state: Bytes,
    extra: Bytes,
    instance: *mut *mut c_void,
) -> u32 {
    guard(ctx, |_| {
        let from = version_input("old version", from_version)?;
        // SAFETY: the host passes input slices valid for the duration of this call.
        let (state, extra) = unsafe {
            (
                Payload::new(state.as_slice()),
                Payload::new(extra.as_slice()),
            )
        };
        let server = T::code_change(&from, state, extra).map_err(Failure::error)?;
        store_instance(instance, server);
        Ok(())
    })
}

unsafe extern "C" fn downgrade_state<T: GenServer>(
    instance: *mut c_void,
    ctx: *mut c_void,
    to_version: Bytes,
    extra: Bytes,
) -> u32 {
    guard(ctx, |raw| {
        let to = version_input("target version", to_version)?;
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        // SAFETY: the host passes input slices valid for the duration of this call.
        let extra = Payload::new(unsafe { extra.as_slice() });
        let encoded = server.downgrade(&to, extra).map_err(Failure::error)?;
        host_output(raw, abi::OUTPUT_STATE, encoded.bytes());
        Ok(())
    })
}

unsafe extern "C" fn health<T: GenServer>(instance: *mut c_void, ctx: *mut c_void) -> u32 {
    guard(ctx, |raw| {
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        output_encoded(raw, abi::OUTPUT_REPLY, &server.health())
    })
}

unsafe extern "C" fn format_status<T: GenServer>(instance: *mut c_void, ctx: *mut c_void) -> u32 {
    guard(ctx, |raw| {
        // SAFETY: the host passes a live instance of this plugin, one call at a time.
        let server = unsafe { server::<T>(instance) };
        let formatted = server.format_status().map_err(Failure::error)?;
        host_output(raw, abi::OUTPUT_STATE, formatted.bytes());
        Ok(())
    })
}

unsafe extern "C" fn drop_instance<T: GenServer>(instance: *mut c_void) -> u32 {
    guard(ptr::null_mut(), |_| {
        if !instance.is_null() {
            // SAFETY: the host passes a handle created by `store_instance::<T>` exactly once.
            drop(unsafe { Box::from_raw(instance as *mut T) });
        }
        Ok(())
    })
}

/// The vtable for `T`; used by [`export_plugin!`](crate::export_plugin).
pub const fn vtable<T: GenServer>() -> PluginVtable {
    PluginVtable {
        initialize,
        init: init::<T>,
        handle_call: handle_call::<T>,
        handle_cast: handle_cast::<T>,
        handle_info: handle_info::<T>,
        handle_continue: handle_continue::<T>,
        terminate: terminate::<T>,
        encode_state: encode_state::<T>,
        restore_state: restore_state::<T>,
        code_change: code_change::<T>,
        downgrade_state: downgrade_state::<T>,
        drop_instance: drop_instance::<T>,
        health: Some(health::<T>),
        format_status: Some(format_status::<T>),
    }
}

/// The header for a plugin; used by [`export_plugin!`](crate::export_plugin).
pub const fn header(
    name: &'static str,
    version: &'static str,
    panic_unwind: bool,
    vtable: &'static PluginVtable,
) -> PluginHeader {
    PluginHeader {
        magic: abi::MAGIC,
        header_size: size_of::<PluginHeader>() as u32,
        abi_major: abi::ABI_MAJOR,
        abi_minor: abi::ABI_MINOR,
        layout_fingerprint: abi::LAYOUT_FINGERPRINT,
        panic_unwind: panic_unwind as u32,
        vtable_size: size_of::<PluginVtable>() as u32,
        name: Bytes::from_slice(name.as_bytes()),
        version: Bytes::from_slice(version.as_bytes()),
        api_version: Bytes::from_slice(abi::API_VERSION.as_bytes()),
        target: Bytes::from_slice(abi::TARGET.as_bytes()),
        vtable,
    }
}

/// Exports a [`GenServer`](crate::GenServer) type as a Graft plugin.
///
/// `export_plugin!(Type)` names the plugin after the crate (`CARGO_PKG_NAME`) and versions
/// it with `CARGO_PKG_VERSION`; `name = "…"` and `version = "…"` override either.
/// It generates the one exported symbol, [`abi::ENTRY_SYMBOL`](crate::abi::ENTRY_SYMBOL).
#[macro_export]
macro_rules! export_plugin {
    ($server:ty) => {
        $crate::export_plugin!(
            $server,
            name = env!("CARGO_PKG_NAME"),
            version = env!("CARGO_PKG_VERSION")
        );
    };
    ($server:ty, name = $name:expr) => {
        $crate::export_plugin!($server, name = $name, version = env!("CARGO_PKG_VERSION"));
    };
    ($server:ty, name = $name:expr, version = $version:expr) => {
        const _: () = {
            static GRAFT_PLUGIN_VTABLE: $crate::abi::PluginVtable =
                $crate::export::vtable::<$server>();
            #[unsafe(no_mangle)]
            #[allow(non_upper_case_globals)]
            pub static graft_plugin_v1: $crate::abi::PluginHeader = $crate::export::header(
                $name,
                $version,
                cfg!(panic = "unwind"),
                &GRAFT_PLUGIN_VTABLE,
            );
        };
    };
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    /// What the fake host's `output` received with a null `ctx`.
    static RECEIVED: Mutex<Vec<(u32, String)>> = Mutex::new(Vec::new());

    unsafe extern "C" fn record_output(ctx: *mut c_void, kind: u32, data: Bytes) {
        assert!(ctx.is_null());
        // SAFETY: the shim borrows the message to this call.
        let text = String::from_utf8_lossy(unsafe { data.as_slice() }).into_owned();
        RECEIVED.lock().unwrap().push((kind, text));
    }

    unsafe extern "C" fn ignore_log(_: *mut c_void, _: u32, _: Bytes, _: Bytes) {}

    unsafe extern "C" fn no_send(_: *mut c_void, _: u32, _: Bytes, _: Bytes) -> u32 {
        abi::SERVICE_UNAVAILABLE
    }

    unsafe extern "C" fn no_call(
        _: *mut c_void,
        _: Bytes,
        _: Bytes,
        _: u64,
        _: *mut c_void,
        _: abi::SinkFn,
    ) -> u32 {
        abi::SERVICE_UNAVAILABLE
    }

    unsafe extern "C" fn no_timer(_: *mut c_void, _: u64, _: u32, _: Bytes) -> u64 {
        0
    }

    unsafe extern "C" fn no_cancel(_: *mut c_void, _: u64) -> u32 {
        0
    }

    unsafe extern "C" fn no_reply(_: *mut c_void, _: u64, _: Bytes) -> u32 {
        abi::SERVICE_UNAVAILABLE
    }

    unsafe extern "C" fn no_name(_: *mut c_void, _: *mut c_void, _: abi::SinkFn) {}

    /// A host that declares a vtable too small for this plugin (it holds `output`, so the
    /// plugin can say why it refuses).
    static TOO_SMALL: HostVtable = HostVtable {
        size: 16 + size_of::<usize>() as u32,
        abi_minor: 0,
        output: record_output,
        log: ignore_log,
        send: no_send,
        call: no_call,
        send_after: no_timer,
        cancel_timer: no_cancel,
        reply: no_reply,
        self_name: no_name,
        hosts: None,
        register_global: None,
        monitor: None,
        monitor_hosts: None,
    };

    #[test]
    fn a_failed_initialize_hands_its_reason_to_the_host() {
        // SAFETY: `TOO_SMALL` is a static host vtable; `initialize` refuses it before
        // storing it, so no later call in this process uses it.
        let status = unsafe { initialize(&TOO_SMALL, 0) };
        assert_eq!(status, abi::STATUS_ERROR);
        let received = RECEIVED.lock().unwrap().clone();
        assert_eq!(
            received,
            vec![(
                abi::OUTPUT_MESSAGE,
                format!(
                    "host vtable is {} bytes, this plugin needs at least {}",
                    TOO_SMALL.size,
                    abi::HOST_VTABLE_SIZE_1_0
                )
            )]
        );
        assert!(host().is_none(), "a refused host vtable must not be kept");
    }
}
