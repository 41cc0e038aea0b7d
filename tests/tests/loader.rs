//! The loader and the ABI, end to end: real `.so` files built from `plugins/` and
//! `tests/fixtures/`, loaded with `dlopen`, two versions side by side, migrated both ways,
//! unloaded and checked in `/proc/self/maps`; bad libraries refused each with its own error,
//! before any of their code runs (a fixture with a load-time constructor proves it); a panic
//! in every callback comes back as an error.

use graft::plugin::{
    CallbackError, Detached, ElfKind, Expectations, Instance, LoadError, LoadedPlugin, Loader,
    Sha256Digest, UnloadOutcome, is_mapped,
};
use graft_plugin::{abi, codec};
use graft_tests::{abort_plugin_library, find_unique, plugin_library};
use semver::Version;
use serde::Serialize;
use serde_json::{Value, json};
use std::path::{Path, PathBuf};
use std::sync::Arc;

const COUNTER_1_0: &str = "counter-1-0-0";
const COUNTER_1_1: &str = "counter-1-1-0";
const FAULTY: &str = "graft-fixture-faulty";

fn services() -> Detached {
    Detached::new("demo")
}

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).unwrap()
}

fn load(loader: &Loader, package: &str) -> Arc<LoadedPlugin> {
    loader
        .load(&plugin_library(package), &Expectations::default())
        .unwrap_or_else(|error| panic!("loading {package}: {error}"))
}

fn call(instance: &mut Instance, request: Value) -> Value {
    let outputs = instance
        .handle_call(&encode(&request), 1, &services())
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    codec::decode(&outputs.reply.expect("a reply")).unwrap()
}

fn start(plugin: &Arc<LoadedPlugin>, args: Value) -> Instance {
    Instance::start(plugin, &encode(&args), &services())
        .unwrap_or_else(|error| panic!("starting {}: {error}", plugin.identity()))
        .0
}

#[test]
fn two_versions_of_one_plugin_run_side_by_side() {
    let loader = Loader::new().unwrap();
    let path_1_0 = plugin_library(COUNTER_1_0);
    let expected = Expectations {
        sha256: Some(Sha256Digest::of(&std::fs::read(&path_1_0).unwrap())),
        name: Some("counter".to_owned()),
        version: Some(Version::new(1, 0, 0)),
    };
    let old = loader.load(&path_1_0, &expected).unwrap();
    let new = load(&loader, COUNTER_1_1);

    assert_eq!(old.name(), "counter");
    assert_eq!(new.name(), "counter");
    assert_eq!(old.version(), &Version::new(1, 0, 0));
    assert_eq!(new.version(), &Version::new(1, 1, 0));
    assert_eq!(old.api_version(), abi::API_VERSION);
    assert_eq!(old.target(), abi::TARGET);
    assert_ne!(old.copy_path(), new.copy_path());
    assert!(old.copy_path().starts_with(loader.directory()));
    assert!(is_mapped(old.copy_path()) && is_mapped(new.copy_path()));

    let mut on_old = start(&old, json!({"start": 10}));
    let mut on_new = start(&new, json!({"start": 20}));
    assert_eq!(call(&mut on_old, json!({"Add": 5})), json!(15));
    assert_eq!(call(&mut on_new, json!({"Add": 5})), json!(25));
    assert_eq!(call(&mut on_new, json!("History")), json!([5]));
    assert_eq!(call(&mut on_old, json!("Get")), json!(15));
    on_old
        .handle_cast(&encode(&json!("Reset")), &services())
        .unwrap();
    assert_eq!(call(&mut on_old, json!("Get")), json!(0));
}

#[test]
fn loading_the_same_file_twice_gives_two_independent_copies() {
    let loader = Loader::new().unwrap();
    let first = load(&loader, COUNTER_1_0);
    let second = load(&loader, COUNTER_1_0);
    assert_ne!(first.copy_path(), second.copy_path());
    let mut one = start(&first, json!({"start": 1}));
    let mut two = start(&second, json!({"start": 2}));
    assert_eq!(call(&mut one, json!("Get")), json!(1));
    assert_eq!(call(&mut two, json!("Get")), json!(2));
}

#[test]
fn state_migrates_up_and_down_with_the_count_intact() {
    let loader = Loader::new().unwrap();
    let old = load(&loader, COUNTER_1_0);
    let new = load(&loader, COUNTER_1_1);

    let mut actor = start(&old, json!({"start": 40}));
    assert_eq!(call(&mut actor, json!({"Add": 2})), json!(42));

    // Up: the new plugin's code_change reads the 1.0.0 shape, with the release's extra.
    let state = actor.encode_state().unwrap();
    let extra = encode(&json!({"history_limit": 2}));
    let mut actor =
        Instance::code_change(&new, old.version(), &state, &extra, &services()).unwrap();
    assert_eq!(call(&mut actor, json!("Get")), json!(42));
    for amount in [1, 2, 3] {
        call(&mut actor, json!({"Add": amount}));
    }
    assert_eq!(
        call(&mut actor, json!("History")),
        json!([2, 3]),
        "the limit from extra applies"
    );
    assert_eq!(call(&mut actor, json!("Get")), json!(48));

    // Down: the newer plugin converts its state; the older decodes it as its own.
    let state = actor.downgrade(old.version(), &[]).unwrap();
    let mut actor = Instance::restore(&old, &state, &services()).unwrap();
    assert_eq!(call(&mut actor, json!("Get")), json!(48));
    assert_eq!(call(&mut actor, json!({"Add": 1})), json!(49));
}

#[test]
fn a_migration_from_an_unknown_version_is_refused_by_the_plugin() {
    let loader = Loader::new().unwrap();
    let new = load(&loader, COUNTER_1_1);
    let state = encode(&json!({"count": 1}));
    let error =
        Instance::code_change(&new, &Version::new(0, 9, 0), &state, &[], &services()).unwrap_err();
    assert!(
        matches!(&error, CallbackError::Failed { callback: "code_change", message, .. } if message.contains("cannot upgrade from 0.9.0")),
        "{error}"
    );
}

#[test]
fn the_default_migration_decodes_the_old_bytes_as_the_new_state() {
    let loader = Loader::new().unwrap();
    let faulty = load(&loader, FAULTY);
    let mut actor = start(&faulty, json!({}));
    call(&mut actor, json!({"Echo": "one"}));
    let state = actor.encode_state().unwrap();
    let mut migrated =
        Instance::code_change(&faulty, &Version::new(0, 2, 0), &state, &[], &services()).unwrap();
    assert_eq!(call(&mut migrated, json!("Handled")), json!("2"));
    let down = migrated.downgrade(&Version::new(0, 2, 0), &[]).unwrap();
    let mut restored = Instance::restore(&faulty, &down, &services()).unwrap();
    assert_eq!(call(&mut restored, json!("Handled")), json!("3"));
}

#[test]
fn a_version_is_unloaded_when_its_last_user_goes() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, COUNTER_1_0);
    let copy = plugin.copy_path().to_owned();
    let identity = plugin.identity().clone();
    let mut actor = start(&plugin, json!({"start": 3}));
    assert_eq!(call(&mut actor, json!({"Add": 1})), json!(4));
    let state = actor.encode_state().unwrap();

    drop(plugin);
    assert!(is_mapped(&copy), "an instance still holds the library");
    assert!(loader.unload_reports().is_empty());

    drop(actor);
    let reports = loader.unload_reports();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].identity, identity);
    assert_eq!(reports[0].copy, copy);
    assert_eq!(
        reports[0].outcome,
        UnloadOutcome::Unloaded,
        "the library stayed mapped"
    );
    assert!(!is_mapped(&copy));
    assert!(!copy.exists(), "the private copy is removed");

    // The state outlives the library: a fresh load takes it back.
    let again = load(&loader, COUNTER_1_0);
    let mut actor = Instance::restore(&again, &state, &services()).unwrap();
    assert_eq!(call(&mut actor, json!("Get")), json!(4));
}

// ---------------------------------------------------------------------------------------
// Bad libraries: each refused with its own error, nothing left loaded.

struct Scratch {
    directory: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        Scratch {
            directory: tempfile::tempdir().unwrap(),
        }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.directory.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    /// A copy of counter 1.0.0 with `patch` applied to its bytes.
    fn patched(&self, name: &str, patch: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let mut bytes = std::fs::read(plugin_library(COUNTER_1_0)).unwrap();
        patch(&mut bytes);
        self.write(name, &bytes)
    }
}

/// The header's file offset: the magic followed by the header size.
fn header_offset(bytes: &[u8]) -> usize {
    let mut needle = abi::MAGIC.to_le_bytes().to_vec();
    needle.extend_from_slice(&(size_of::<abi::PluginHeader>() as u32).to_le_bytes());
    find_unique(bytes, &needle)
}

fn refuse(loader: &Loader, path: &Path, expect: &Expectations) -> LoadError {
    let error = loader
        .load(path, expect)
        .expect_err("the library must be refused");
    let leftovers: Vec<_> = std::fs::read_dir(loader.directory()).unwrap().collect();
    assert!(
        leftovers.is_empty(),
        "nothing may stay behind after {error}: {leftovers:?}"
    );
    assert!(
        error.to_string().contains(&path.display().to_string())
            || matches!(error, LoadError::Read { .. })
    );
    error
}

#[test]
fn a_directory_is_not_a_plugin() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let error = refuse(&loader, scratch.directory.path(), &Expectations::default());
    assert!(matches!(error, LoadError::NotAFile { .. }), "{error}");
}

#[test]
fn a_missing_file_is_a_read_error_naming_it() {
    let loader = Loader::new().unwrap();
    let path = Path::new("/nonexistent/libnothing.so");
    let error = refuse(&loader, path, &Expectations::default());
    assert!(matches!(error, LoadError::Read { .. }), "{error}");
    assert!(
        error.to_string().contains("/nonexistent/libnothing.so"),
        "{error}"
    );
}

#[test]
fn a_text_file_is_not_elf() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let path = scratch.write("notes.so", b"these are not the bytes you are looking for");
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(matches!(error, LoadError::NotElf { .. }), "{error}");
}

#[test]
fn a_truncated_library_is_refused_before_dlopen() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let path = scratch.patched("truncated.so", |bytes| bytes.truncate(bytes.len() / 2));
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(matches!(error, LoadError::Truncated { .. }), "{error}");
}

#[test]
fn a_malformed_elf_object_is_refused_before_dlopen() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    // e_shstrndx (ELF64, little-endian) past the section table.
    let path = scratch.patched("shstrndx.so", |bytes| {
        bytes[0x3e..0x40].copy_from_slice(&0xfff0_u16.to_le_bytes())
    });
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(matches!(error, LoadError::MalformedElf { .. }), "{error}");
    assert!(error.to_string().contains("malformed ELF"), "{error}");
}

#[test]
fn an_elf_object_for_another_machine_is_refused_naming_both() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    // e_machine (little-endian on both): AArch64 (0xb7) unless this host is AArch64, then
    // x86-64 (0x3e).
    let (machine, name) = if cfg!(target_arch = "aarch64") {
        (0x3e, "X86_64")
    } else {
        (0xb7, "Aarch64")
    };
    let path = scratch.patched("other-machine.so", |bytes| bytes[0x12] = machine);
    let error = refuse(&loader, &path, &Expectations::default());
    let LoadError::WrongMachine {
        expected, found, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(*expected, ElfKind::host().to_string());
    assert!(found.contains(name), "{error}");
    let text = error.to_string();
    assert!(
        text.contains(expected.as_str()) && text.contains(name),
        "{text}"
    );
}

#[test]
fn this_hosts_own_machine_is_accepted() {
    let host = ElfKind::host().to_string();
    assert!(host.starts_with("ELF"), "{host}");
    assert!(!host.contains("Unknown"), "{host}");
    let loader = Loader::new().unwrap();
    loader
        .load(&plugin_library(COUNTER_1_0), &Expectations::default())
        .unwrap();
}

/// The marker the constructor fixture's load-time constructor writes in this process.
fn constructor_marker() -> PathBuf {
    std::env::temp_dir().join(format!("graft-fixture-constructor-{}", std::process::id()))
}

#[test]
fn nothing_of_a_refused_library_runs_not_even_its_constructors() {
    let loader = Loader::new().unwrap();
    let path = plugin_library("graft-fixture-constructor");
    let marker = constructor_marker();
    let _ = std::fs::remove_file(&marker);
    let scratch = Scratch::new();
    let newer_minor = scratch.write("newer-minor.so", &{
        let mut bytes = std::fs::read(&path).unwrap();
        let start = header_offset(&bytes) + std::mem::offset_of!(abi::PluginHeader, abi_minor);
        bytes[start..start + 2].copy_from_slice(&(abi::ABI_MINOR + 1).to_le_bytes());
        bytes
    });

    let another_name = Expectations {
        name: Some("counter".to_owned()),
        ..Expectations::default()
    };
    let error = refuse(&loader, &path, &another_name);
    assert!(matches!(error, LoadError::NameMismatch { .. }), "{error}");
    let error = refuse(&loader, &newer_minor, &Expectations::default());
    assert!(matches!(error, LoadError::AbiMinorTooNew { .. }), "{error}");
    assert!(
        !marker.exists(),
        "a refused library ran its load-time constructor"
    );

    // The same library, accepted, does run it: the marker means what the test says.
    let its_name = Expectations {
        name: Some("constructor".to_owned()),
        ..Expectations::default()
    };
    let plugin = loader.load(&path, &its_name).unwrap();
    assert!(marker.exists(), "the fixture's constructor did not run");
    drop(plugin);
    let _ = std::fs::remove_file(&marker);
}

#[test]
fn a_file_that_is_too_large_is_refused_without_reading_it() {
    let loader = Loader::new().unwrap().with_max_size(4096);
    let error = refuse(
        &loader,
        &plugin_library(COUNTER_1_0),
        &Expectations::default(),
    );
    assert!(
        matches!(error, LoadError::TooLarge { limit: 4096, .. }),
        "{error}"
    );
}

#[test]
fn a_digest_mismatch_is_caught_before_any_plugin_code_runs() {
    let loader = Loader::new().unwrap();
    let path = plugin_library(COUNTER_1_0);
    let expect = Expectations {
        sha256: Some(Sha256Digest([7; 32])),
        ..Expectations::default()
    };
    let error = refuse(&loader, &path, &expect);
    let LoadError::DigestMismatch {
        expected, actual, ..
    } = &error
    else {
        panic!("{error}");
    };
    assert_eq!(expected.to_string(), "07".repeat(32));
    assert_eq!(*actual, Sha256Digest::of(&std::fs::read(&path).unwrap()));
}

#[test]
fn a_library_without_the_entry_symbol_is_refused() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    // Rename the symbol everywhere it is spelled (dynamic and static symbol tables).
    let path = scratch.patched("renamed.so", |bytes| {
        let needle = b"graft_plugin_v1\0";
        let positions: Vec<usize> = (0..bytes.len() - needle.len())
            .filter(|&position| &bytes[position..position + needle.len()] == needle)
            .collect();
        assert!(!positions.is_empty());
        for position in positions {
            bytes[position + 14] = b'9';
        }
    });
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(
        matches!(&error, LoadError::MissingEntrySymbol { symbol, .. } if symbol == "graft_plugin_v1"),
        "{error}"
    );
}

fn patch_header(scratch: &Scratch, name: &str, offset_in_header: usize, value: &[u8]) -> PathBuf {
    scratch.patched(name, |bytes| {
        let start = header_offset(bytes) + offset_in_header;
        bytes[start..start + value.len()].copy_from_slice(value);
    })
}

#[test]
fn a_wrong_magic_is_refused() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let path = patch_header(&scratch, "magic.so", 0, b"NOTGRAFT");
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(
        matches!(error, LoadError::BadMagic { found, .. } if found == u64::from_le_bytes(*b"NOTGRAFT")),
        "{error}"
    );
}

#[test]
fn another_abi_major_is_refused() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let offset = std::mem::offset_of!(abi::PluginHeader, abi_major);
    let path = patch_header(&scratch, "major.so", offset, &2u16.to_le_bytes());
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(
        matches!(
            error,
            LoadError::AbiMajorMismatch {
                found: 2,
                expected: 1,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_newer_abi_minor_than_the_host_knows_is_refused() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let offset = std::mem::offset_of!(abi::PluginHeader, abi_minor);
    let path = patch_header(
        &scratch,
        "minor.so",
        offset,
        &(abi::ABI_MINOR + 1).to_le_bytes(),
    );
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(matches!(error, LoadError::AbiMinorTooNew { .. }), "{error}");
}

#[test]
fn another_layout_fingerprint_is_refused() {
    let loader = Loader::new().unwrap();
    let scratch = Scratch::new();
    let offset = std::mem::offset_of!(abi::PluginHeader, layout_fingerprint);
    let path = patch_header(
        &scratch,
        "layout.so",
        offset,
        &0xdead_beef_u64.to_le_bytes(),
    );
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(
        matches!(
            error,
            LoadError::LayoutMismatch {
                found: 0xdead_beef,
                ..
            }
        ),
        "{error}"
    );
}

#[test]
fn a_plugin_built_with_panic_abort_is_refused() {
    let loader = Loader::new().unwrap();
    let path = abort_plugin_library();
    let error = refuse(&loader, &path, &Expectations::default());
    assert!(matches!(error, LoadError::PanicAbort { .. }), "{error}");
    assert!(error.to_string().contains("panic = \"abort\""), "{error}");
}

#[test]
fn another_name_or_version_than_asked_for_is_refused() {
    let loader = Loader::new().unwrap();
    let path = plugin_library(COUNTER_1_0);
    let wrong_name = Expectations {
        name: Some("kv".to_owned()),
        ..Expectations::default()
    };
    let error = refuse(&loader, &path, &wrong_name);
    assert!(
        matches!(&error, LoadError::NameMismatch { expected, found, .. } if expected == "kv" && found == "counter"),
        "{error}"
    );
    let wrong_version = Expectations {
        version: Some(Version::new(1, 1, 0)),
        ..Expectations::default()
    };
    let error = refuse(&loader, &path, &wrong_version);
    assert!(
        matches!(error, LoadError::VersionMismatch { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("version 1.0.0, expected 1.1.0"),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// Panics and errors in callbacks come back as values.

fn panicking_in(callback: &str) -> (Arc<LoadedPlugin>, Value) {
    let loader = Loader::new().unwrap();
    (load(&loader, FAULTY), json!({"panic_in": [callback]}))
}

fn assert_panicked(error: &CallbackError, callback: &str) {
    assert!(
        matches!(error, CallbackError::Panicked { callback: name, message, .. }
            if *name == callback && message.contains(&format!("faulty panics in {callback} on purpose"))),
        "{error}"
    );
}

#[test]
fn a_panic_in_init_is_an_error() {
    let (faulty, args) = panicking_in("init");
    let error = Instance::start(&faulty, &encode(&args), &services()).unwrap_err();
    assert_panicked(&error, "init");
    assert!(
        error.to_string().starts_with("faulty 0.3.0: init panicked"),
        "{error}"
    );
}

#[test]
fn a_panic_in_each_message_callback_is_an_error() {
    let (faulty, args) = panicking_in("handle_call");
    let mut actor = start(&faulty, args);
    assert_panicked(
        &actor
            .handle_call(&encode(&json!("Handled")), 1, &services())
            .unwrap_err(),
        "handle_call",
    );

    let (faulty, args) = panicking_in("handle_cast");
    let mut actor = start(&faulty, args);
    assert_panicked(
        &actor
            .handle_cast(&encode(&"hello"), &services())
            .unwrap_err(),
        "handle_cast",
    );

    let (faulty, args) = panicking_in("handle_info");
    let mut actor = start(&faulty, args);
    let error = actor
        .handle_info(abi::INFO_MESSAGE, &encode(&"tick"), &services())
        .unwrap_err();
    assert_panicked(&error, "handle_info");

    let (faulty, args) = panicking_in("terminate");
    let mut actor = start(&faulty, args);
    let error = actor
        .terminate(&graft_plugin::StopReason::Shutdown(None), &services())
        .unwrap_err();
    assert_panicked(&error, "terminate");
}

#[test]
fn a_panic_in_handle_continue_is_an_error() {
    let (faulty, args) = panicking_in("handle_continue");
    let (mut actor, outputs) = Instance::start(&faulty, &encode(&args), &services()).unwrap();
    let argument = outputs
        .continue_with
        .expect("init asked for handle_continue");
    let error = actor.handle_continue(&argument, &services()).unwrap_err();
    assert_panicked(&error, "handle_continue");
}

#[test]
fn a_panic_in_either_migration_is_an_error() {
    let (faulty, args) = panicking_in("code_change");
    let mut actor = start(&faulty, args);
    let state = actor.encode_state().unwrap();
    let error = Instance::code_change(&faulty, &Version::new(0, 2, 0), &state, &[], &services())
        .unwrap_err();
    assert_panicked(&error, "code_change");

    let (faulty, args) = panicking_in("downgrade");
    let mut actor = start(&faulty, args);
    let error = actor.downgrade(&Version::new(0, 2, 0), &[]).unwrap_err();
    assert_panicked(&error, "downgrade");
    // The instance is still usable by the host afterwards (it decides what to do with it).
    assert!(actor.encode_state().is_ok());
}

#[test]
fn an_error_value_and_an_undecodable_message_are_told_apart() {
    let loader = Loader::new().unwrap();
    let faulty = load(&loader, FAULTY);
    let mut actor = start(&faulty, json!({}));

    let error = actor
        .handle_call(&encode(&json!({"Fail": "out of coffee"})), 1, &services())
        .unwrap_err();
    assert!(
        matches!(&error, CallbackError::Failed { callback: "handle_call", message, .. } if message == "out of coffee"),
        "{error}"
    );

    let error = actor
        .handle_call(&[0xc1, 0x00, 0xff], 2, &services())
        .unwrap_err();
    assert!(error.is_bad_input(), "{error}");
    assert!(
        error.to_string().contains("call request does not decode"),
        "{error}"
    );

    let error =
        Instance::start(&faulty, &encode(&json!({"panic_in": 5})), &services()).unwrap_err();
    assert!(error.is_bad_input(), "{error}");

    // Neither harmed the actor.
    assert_eq!(
        call(&mut actor, json!({"Echo": "still here"})),
        json!("still here")
    );
}

#[test]
fn services_unavailable_outside_an_actor_are_errors_in_the_plugin() {
    let loader = Loader::new().unwrap();
    let counter = load(&loader, COUNTER_1_0);
    let mut actor = start(&counter, json!({}));
    // GetLater needs a timer, which detached services do not offer: the plugin's `?`
    // turns the ContextError into an error value.
    let error = actor
        .handle_call(
            &encode(&json!({"GetLater": {"delay_ms": 5}})),
            1,
            &services(),
        )
        .unwrap_err();
    assert!(
        matches!(&error, CallbackError::Failed { message, .. } if message.contains("service unavailable")),
        "{error}"
    );
}
