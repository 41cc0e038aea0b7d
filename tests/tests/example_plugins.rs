//! The example plugins in `plugins/`, each loaded from its real library and driven through
//! the loader's `Instance` callbacks: calculator (a panic is a crash), egg_timer and ticker
//! (timers, checked with recording host services and delivered by hand), super_duper
//! (an error value is a crash), kv 1.0.0 and 1.1.0 (the default migration both ways).

use graft::plugin::{
    CallbackError, Detached, Expectations, HostServices, Instance, LoadedPlugin, Loader, SendKind,
    ServiceError,
};
use graft_plugin::{StopReason, abi, codec};
use graft_tests::plugin_library;
use semver::Version;
use serde::Serialize;
use serde_json::{Value, json};
use std::cell::{Cell, RefCell};
use std::sync::Arc;
use std::time::Duration;

const CALCULATOR: &str = "calculator-1-0-0";
const EGG_TIMER: &str = "egg_timer-1-0-0";
const SUPER_DUPER: &str = "super_duper-1-0-0";
const KV_1_0: &str = "kv-1-0-0";
const KV_1_1: &str = "kv-1-1-0";
const TICKER: &str = "ticker-1-0-0";

fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    codec::encode(value).unwrap()
}

fn decode(bytes: &[u8]) -> Value {
    codec::decode(bytes).unwrap()
}

fn load(loader: &Loader, package: &str) -> Arc<LoadedPlugin> {
    loader
        .load(&plugin_library(package), &Expectations::default())
        .unwrap_or_else(|error| panic!("loading {package}: {error}"))
}

fn start(plugin: &Arc<LoadedPlugin>, args: Value, services: &dyn HostServices) -> Instance {
    Instance::start(plugin, &encode(&args), services)
        .unwrap_or_else(|error| panic!("starting {}: {error}", plugin.identity()))
        .0
}

fn call(instance: &mut Instance, request: Value, services: &dyn HostServices) -> Value {
    let outputs = instance
        .handle_call(&encode(&request), 1, services)
        .unwrap_or_else(|error| panic!("call {request}: {error}"));
    assert_eq!(outputs.stop, None, "call {request} stopped the actor");
    decode(&outputs.reply.expect("a reply"))
}

fn cast(instance: &mut Instance, message: Value, services: &dyn HostServices) {
    let outputs = instance
        .handle_cast(&encode(&message), services)
        .unwrap_or_else(|error| panic!("cast {message}: {error}"));
    assert_eq!(outputs.stop, None, "cast {message} stopped the actor");
}

fn call_error(
    instance: &mut Instance,
    request: Value,
    services: &dyn HostServices,
) -> CallbackError {
    instance
        .handle_call(&encode(&request), 1, services)
        .expect_err("the call must fail")
}

// ---------------------------------------------------------------------------------------
// Recording host services: timers and sends are recorded, never run.

/// A timer a plugin asked for.
#[derive(Debug, Clone)]
struct Timer {
    id: u64,
    delay: Duration,
    repeat: bool,
    message: Vec<u8>,
}

/// A message a plugin sent.
#[derive(Debug, Clone)]
struct Sent {
    to: String,
    kind: SendKind,
    message: Vec<u8>,
}

/// Host services for one actor that record timers (with increasing ids from 1) and sends
/// (to the actors it knows; others are `NotFound`), for the test to inspect and deliver.
struct Recorder {
    name: String,
    actors: Vec<String>,
    next_timer: Cell<u64>,
    timers: RefCell<Vec<Timer>>,
    cancelled: RefCell<Vec<u64>>,
    sent: RefCell<Vec<Sent>>,
}

impl Recorder {
    fn new(name: &str) -> Recorder {
        Recorder::knowing(name, &[])
    }

    fn knowing(name: &str, actors: &[&str]) -> Recorder {
        Recorder {
            name: name.to_owned(),
            actors: actors.iter().map(|actor| (*actor).to_owned()).collect(),
            next_timer: Cell::new(1),
            timers: RefCell::new(Vec::new()),
            cancelled: RefCell::new(Vec::new()),
            sent: RefCell::new(Vec::new()),
        }
    }

    fn timers(&self) -> Vec<Timer> {
        self.timers.borrow().clone()
    }

    fn cancelled(&self) -> Vec<u64> {
        self.cancelled.borrow().clone()
    }

    fn sent(&self) -> Vec<Sent> {
        self.sent.borrow().clone()
    }
}

impl HostServices for Recorder {
    fn actor_name(&self) -> &str {
        &self.name
    }

    fn send(&self, to: &str, kind: SendKind, message: Vec<u8>) -> Result<(), ServiceError> {
        if !self.actors.iter().any(|actor| actor == to) {
            return Err(ServiceError::NotFound(to.to_owned()));
        }
        self.sent.borrow_mut().push(Sent {
            to: to.to_owned(),
            kind,
            message,
        });
        Ok(())
    }

    fn call(
        &self,
        _to: &str,
        _message: Vec<u8>,
        _timeout: Duration,
    ) -> Result<Vec<u8>, ServiceError> {
        Err(ServiceError::Unavailable("call"))
    }

    fn start_timer(&self, delay: Duration, repeat: bool, message: Vec<u8>) -> Option<u64> {
        let id = self.next_timer.get();
        self.next_timer.set(id + 1);
        self.timers.borrow_mut().push(Timer {
            id,
            delay,
            repeat,
            message,
        });
        Some(id)
    }

    fn cancel_timer(&self, timer: u64) -> bool {
        let started = self.timers.borrow().iter().any(|t| t.id == timer);
        let mut cancelled = self.cancelled.borrow_mut();
        if !started || cancelled.contains(&timer) {
            return false;
        }
        cancelled.push(timer);
        true
    }

    fn reply(&self, _token: u64, _message: Vec<u8>) -> Result<(), ServiceError> {
        Err(ServiceError::Unavailable("reply"))
    }
}

/// Delivers a recorded timer's message as the host would when it fires.
fn fire(instance: &mut Instance, timer: &Timer, services: &dyn HostServices) {
    let outputs = instance
        .handle_info(abi::INFO_MESSAGE, &timer.message, services)
        .unwrap_or_else(|error| panic!("delivering timer {}: {error}", timer.id));
    assert_eq!(outputs.stop, None);
}

fn assert_unavailable(error: &CallbackError) {
    assert!(
        matches!(error, CallbackError::Failed { message, .. } if message.contains("service unavailable")),
        "{error}"
    );
}

// ---------------------------------------------------------------------------------------
// calculator

#[test]
fn calculator_computes_and_a_division_by_zero_is_a_panic() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, CALCULATOR);
    assert_eq!(plugin.name(), "calculator");
    assert_eq!(plugin.version(), &Version::new(1, 0, 0));
    let services = Detached::new("calculator");

    let mut fresh = start(&plugin, json!({}), &services);
    assert_eq!(call(&mut fresh, json!("Get"), &services), json!(0));

    let mut calc = start(&plugin, json!({"start": 10}), &services);
    assert_eq!(call(&mut calc, json!("Get"), &services), json!(10));
    assert_eq!(call(&mut calc, json!({"Add": 5}), &services), json!(15));
    assert_eq!(
        call(&mut calc, json!({"Subtract": 18}), &services),
        json!(-3)
    );
    assert_eq!(
        call(&mut calc, json!({"Multiply": -4}), &services),
        json!(12)
    );
    assert_eq!(call(&mut calc, json!({"Divide": 5}), &services), json!(2));
    assert_eq!(call(&mut calc, json!("Get"), &services), json!(2));

    let error = call_error(&mut calc, json!({"Divide": 0}), &services);
    assert!(
        matches!(&error, CallbackError::Panicked { callback: "handle_call", message, .. }
            if message.contains("divide 2 by zero")),
        "{error}"
    );

    let mut huge = start(&plugin, json!({"start": i64::MAX}), &services);
    let error = call_error(&mut huge, json!({"Add": 1}), &services);
    assert!(
        matches!(&error, CallbackError::Panicked { message, .. } if message.contains("overflows")),
        "{error}"
    );

    // An undecodable request is refused before anything runs: that is not a crash.
    let error = call_error(&mut fresh, json!({"Divide": "two"}), &services);
    assert!(error.is_bad_input(), "{error}");
    assert_eq!(call(&mut fresh, json!({"Add": 7}), &services), json!(7));
}

// ---------------------------------------------------------------------------------------
// egg_timer

#[test]
fn egg_timer_schedules_rings_and_cancels_alarms() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, EGG_TIMER);
    assert_eq!(plugin.name(), "egg_timer");
    let services = Recorder::new("egg_timer");
    let mut timer = start(&plugin, json!({}), &services);

    assert_eq!(
        call(
            &mut timer,
            json!({"Schedule": {"name": "tea", "after_ms": 180_000}}),
            &services
        ),
        json!("tea")
    );
    assert_eq!(
        call(
            &mut timer,
            json!({"Schedule": {"name": "egg", "after_ms": 60_000}}),
            &services
        ),
        json!("egg")
    );
    let timers = services.timers();
    assert_eq!(timers.len(), 2);
    let (tea, egg) = (timers[0].clone(), timers[1].clone());
    assert_eq!((tea.id, egg.id), (1, 2));
    assert_eq!(tea.delay, Duration::from_secs(180));
    assert_eq!(egg.delay, Duration::from_secs(60));
    assert!(!tea.repeat && !egg.repeat);
    assert_eq!(decode(&tea.message), json!({"Alarm": "tea"}));
    assert_eq!(decode(&egg.message), json!({"Alarm": "egg"}));

    let status = call(&mut timer, json!("Status"), &services);
    let alarms = status.as_array().expect("a list");
    assert_eq!(alarms.len(), 2);
    assert_eq!(alarms[0]["name"], json!("egg"), "sorted by name: {status}");
    assert_eq!(alarms[1]["name"], json!("tea"), "sorted by name: {status}");
    let remaining = |alarm: &Value| alarm["remaining_ms"].as_u64().expect("remaining_ms");
    assert!(
        (50_000..=60_000).contains(&remaining(&alarms[0])),
        "{status}"
    );
    assert!(
        (170_000..=180_000).contains(&remaining(&alarms[1])),
        "{status}"
    );

    assert_eq!(call(&mut timer, json!("Rang"), &services), json!([]));
    fire(&mut timer, &tea, &services);
    assert_eq!(call(&mut timer, json!("Rang"), &services), json!(["tea"]));
    let status = call(&mut timer, json!("Status"), &services);
    assert_eq!(status.as_array().unwrap().len(), 1, "{status}");
    assert_eq!(status[0]["name"], json!("egg"));

    // Cancelling: a pending alarm once, never a rung or unknown one, and never a crash.
    assert_eq!(
        call(&mut timer, json!({"Cancel": "egg"}), &services),
        json!(true)
    );
    assert_eq!(services.cancelled(), vec![egg.id]);
    assert_eq!(
        call(&mut timer, json!({"Cancel": "egg"}), &services),
        json!(false)
    );
    assert_eq!(
        call(&mut timer, json!({"Cancel": "tea"}), &services),
        json!(false)
    );
    assert_eq!(
        call(&mut timer, json!({"Cancel": "kettle"}), &services),
        json!(false)
    );
    assert_eq!(call(&mut timer, json!("Status"), &services), json!([]));

    // A ring already on its way when the alarm was cancelled is ignored.
    fire(&mut timer, &egg, &services);
    assert_eq!(call(&mut timer, json!("Rang"), &services), json!(["tea"]));

    // Rescheduling a pending alarm replaces its timer.
    call(
        &mut timer,
        json!({"Schedule": {"name": "rice", "after_ms": 5}}),
        &services,
    );
    call(
        &mut timer,
        json!({"Schedule": {"name": "rice", "after_ms": 900_000}}),
        &services,
    );
    let timers = services.timers();
    assert_eq!(timers.len(), 4);
    assert_eq!(services.cancelled(), vec![egg.id, timers[2].id]);
    let status = call(&mut timer, json!("Status"), &services);
    assert!(remaining(&status[0]) > 800_000, "{status}");
    fire(&mut timer, &timers[3], &services);
    assert_eq!(
        call(&mut timer, json!("Rang"), &services),
        json!(["tea", "rice"])
    );

    // The state survives an encode/restore round trip (as across a restart of the host).
    let state = timer.encode_state().unwrap();
    let mut restored = Instance::restore(&plugin, &state, &services).unwrap();
    assert_eq!(
        call(&mut restored, json!("Rang"), &services),
        json!(["tea", "rice"])
    );
}

#[test]
fn egg_timer_without_timers_fails_the_call_but_not_the_plugin() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, EGG_TIMER);
    let services = Detached::new("egg_timer");
    let mut timer = start(&plugin, json!(null), &services);
    let error = call_error(
        &mut timer,
        json!({"Schedule": {"name": "tea", "after_ms": 10}}),
        &services,
    );
    assert_unavailable(&error);
    assert_eq!(call(&mut timer, json!("Status"), &services), json!([]));
}

// ---------------------------------------------------------------------------------------
// super_duper

#[test]
fn super_duper_greets_and_crashes_with_an_error() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, SUPER_DUPER);
    assert_eq!(plugin.name(), "super_duper");
    let services = Detached::new("super_duper");
    let args = json!({"name": "Mighty Mouse", "power": "flight"});
    let mut hero = start(&plugin, args.clone(), &services);

    let identity = call(&mut hero, json!("WhoAreYou"), &services);
    assert_eq!(identity["name"], json!("Mighty Mouse"));
    assert_eq!(identity["power"], json!("flight"));
    let incarnation = identity["incarnation"].as_u64().expect("an incarnation");

    assert_eq!(call(&mut hero, json!("Greet"), &services), json!(1));
    cast(&mut hero, json!("Greet"), &services);
    assert_eq!(call(&mut hero, json!("Greet"), &services), json!(3));

    let error = call_error(&mut hero, json!("Crash"), &services);
    assert!(
        matches!(&error, CallbackError::Failed { callback: "handle_call", message, .. }
            if message == "Mighty Mouse was defeated after 3 greetings"),
        "{error}"
    );

    // What a supervisor's restart does: the same arguments, a new incarnation, fresh state.
    let mut again = start(&plugin, args, &services);
    let identity = call(&mut again, json!("WhoAreYou"), &services);
    assert_eq!(identity["name"], json!("Mighty Mouse"));
    assert_ne!(identity["incarnation"].as_u64(), Some(incarnation));
    assert_eq!(call(&mut again, json!("Greet"), &services), json!(1));

    let error = Instance::start(&plugin, &encode(&json!({"name": "Nobody"})), &services)
        .expect_err("a power is required");
    assert!(error.is_bad_input(), "{error}");
}

// ---------------------------------------------------------------------------------------
// kv

#[test]
fn kv_stores_and_answers() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, KV_1_0);
    assert_eq!(plugin.name(), "kv");
    assert_eq!(plugin.version(), &Version::new(1, 0, 0));
    let services = Detached::new("kv");
    let mut kv = start(&plugin, json!({}), &services);

    let put = |key: &str, value: &str| json!({"Put": {"key": key, "value": value}});
    assert_eq!(call(&mut kv, put("a", "1"), &services), json!(null));
    assert_eq!(call(&mut kv, put("a", "2"), &services), json!("1"));
    assert_eq!(call(&mut kv, json!({"Get": "a"}), &services), json!("2"));
    assert_eq!(call(&mut kv, json!({"Get": "zz"}), &services), json!(null));
    cast(&mut kv, put("c", "3"), &services);
    cast(&mut kv, put("b", "4"), &services);
    assert_eq!(
        call(&mut kv, json!("Keys"), &services),
        json!(["a", "b", "c"])
    );
    assert_eq!(call(&mut kv, json!("Len"), &services), json!(3));
    assert_eq!(call(&mut kv, json!({"Delete": "a"}), &services), json!("2"));
    assert_eq!(
        call(&mut kv, json!({"Delete": "a"}), &services),
        json!(null)
    );
    assert_eq!(call(&mut kv, json!("Len"), &services), json!(2));

    // 1.0.0 does not know 1.1.0's `Requests`.
    let error = call_error(&mut kv, json!("Requests"), &services);
    assert!(error.is_bad_input(), "{error}");
}

#[test]
fn kv_upgrades_to_1_1_0_with_the_default_migration_and_back() {
    let loader = Loader::new().unwrap();
    let old = load(&loader, KV_1_0);
    let new = load(&loader, KV_1_1);
    assert_eq!(new.version(), &Version::new(1, 1, 0));
    let services = Detached::new("kv");

    let mut kv = start(&old, json!({}), &services);
    for (key, value) in [("apple", "red"), ("banana", "yellow"), ("cherry", "dark")] {
        call(
            &mut kv,
            json!({"Put": {"key": key, "value": value}}),
            &services,
        );
    }
    let state = kv.encode_state().unwrap();

    let mut upgraded =
        Instance::code_change(&new, &Version::new(1, 0, 0), &state, &[], &services).unwrap();
    assert_eq!(call(&mut upgraded, json!("Requests"), &services), json!(0));
    assert_eq!(
        call(&mut upgraded, json!("Keys"), &services),
        json!(["apple", "banana", "cherry"])
    );
    assert_eq!(
        call(&mut upgraded, json!({"Get": "banana"}), &services),
        json!("yellow")
    );
    assert_eq!(call(&mut upgraded, json!("Len"), &services), json!(3));
    cast(
        &mut upgraded,
        json!({"Put": {"key": "date", "value": "brown"}}),
        &services,
    );
    assert_eq!(call(&mut upgraded, json!("Requests"), &services), json!(4));
    assert_eq!(
        call(&mut upgraded, json!({"Delete": "apple"}), &services),
        json!("red")
    );
    assert_eq!(call(&mut upgraded, json!("Requests"), &services), json!(5));

    // The default downgrade: 1.0.0 decodes 1.1.0's state, ignoring `requests`.
    let state = upgraded.downgrade(&Version::new(1, 0, 0), &[]).unwrap();
    let mut downgraded = Instance::restore(&old, &state, &services).unwrap();
    assert_eq!(
        call(&mut downgraded, json!("Keys"), &services),
        json!(["banana", "cherry", "date"])
    );

    // A fresh 1.1.0 server counts from zero too.
    let mut fresh = start(&new, json!(null), &services);
    assert_eq!(call(&mut fresh, json!("Requests"), &services), json!(0));
    assert_eq!(
        call(&mut fresh, json!({"Get": "x"}), &services),
        json!(null)
    );
    assert_eq!(call(&mut fresh, json!("Requests"), &services), json!(1));
}

// ---------------------------------------------------------------------------------------
// ticker

#[test]
fn ticker_counts_the_ticks_of_its_interval_until_stopped() {
    let loader = Loader::new().unwrap();
    let plugin = load(&loader, TICKER);
    assert_eq!(plugin.name(), "ticker");
    let services = Recorder::new("ticker");

    let (mut ticker, outputs) = Instance::start(
        &plugin,
        &encode(&json!({"role": "ticker", "period_ms": 20})),
        &services,
    )
    .unwrap();
    assert_eq!(outputs.continue_with, None);
    let timers = services.timers();
    assert_eq!(timers.len(), 1);
    let interval = timers[0].clone();
    assert_eq!(interval.delay, Duration::from_millis(20));
    assert!(interval.repeat);
    assert_eq!(decode(&interval.message), json!("Tick"));

    assert_eq!(call(&mut ticker, json!("Ticks"), &services), json!(0));
    for _ in 0..3 {
        fire(&mut ticker, &interval, &services);
    }
    assert_eq!(call(&mut ticker, json!("Ticks"), &services), json!(3));
    assert_eq!(
        call(&mut ticker, json!("StopTicking"), &services),
        json!(true)
    );
    assert_eq!(services.cancelled(), vec![interval.id]);
    assert_eq!(
        call(&mut ticker, json!("StopTicking"), &services),
        json!(false)
    );
    // A tick already on its way when the interval was cancelled is not counted.
    fire(&mut ticker, &interval, &services);
    assert_eq!(call(&mut ticker, json!("Ticks"), &services), json!(3));

    // The default period.
    let services = Recorder::new("ticker");
    start(&plugin, json!({"role": "ticker"}), &services);
    assert_eq!(services.timers()[0].delay, Duration::from_millis(50));

    // Without timers, or with a zero period, the ticker cannot start.
    let detached = Detached::new("ticker");
    let error = Instance::start(&plugin, &encode(&json!({"role": "ticker"})), &detached)
        .expect_err("no timers");
    assert_unavailable(&error);
    let error = Instance::start(
        &plugin,
        &encode(&json!({"role": "ticker", "period_ms": 0})),
        &services,
    )
    .expect_err("a zero period");
    assert!(
        matches!(&error, CallbackError::Failed { callback: "init", message, .. } if message.contains("period_ms")),
        "{error}"
    );
}

#[test]
fn ticker_startup_runs_once_notifies_and_exits_normally() {
    let loader = Loader::new().unwrap();
    let ticker = load(&loader, TICKER);
    let kv_plugin = load(&loader, KV_1_0);
    let services = Recorder::knowing("boot", &["kv"]);

    let (mut task, outputs) = Instance::start(
        &ticker,
        &encode(&json!({"role": "startup", "notify": "kv"})),
        &services,
    )
    .unwrap();
    assert!(services.timers().is_empty());
    assert!(
        services.sent().is_empty(),
        "the work waits for handle_continue"
    );
    let argument = outputs
        .continue_with
        .expect("init asks for handle_continue");
    let outputs = task.handle_continue(&argument, &services).unwrap();
    assert_eq!(outputs.stop, Some(StopReason::Normal));

    let sent = services.sent();
    assert_eq!(sent.len(), 1);
    assert_eq!(sent[0].to, "kv");
    assert_eq!(sent[0].kind, SendKind::Cast);
    assert_eq!(
        decode(&sent[0].message),
        json!({"Put": {"key": "boot", "value": "done"}})
    );
    // The notice is a cast kv understands.
    let kv_services = Detached::new("kv");
    let mut kv = start(&kv_plugin, json!({}), &kv_services);
    kv.handle_cast(&sent[0].message, &kv_services).unwrap();
    assert_eq!(
        call(&mut kv, json!({"Get": "boot"}), &kv_services),
        json!("done")
    );

    // No one to notify, or a notify actor that does not exist: still a normal exit.
    for args in [
        json!({"role": "startup"}),
        json!({"role": "startup", "notify": "nobody"}),
    ] {
        let services = Recorder::new("boot");
        let (mut task, outputs) = Instance::start(&ticker, &encode(&args), &services).unwrap();
        let outputs = task
            .handle_continue(&outputs.continue_with.expect("a continuation"), &services)
            .unwrap();
        assert_eq!(outputs.stop, Some(StopReason::Normal), "{args}");
        assert!(services.sent().is_empty());
    }

    // Any other failure to notify is an error: the startup task did not do its work.
    let detached = Detached::new("boot");
    let (mut task, outputs) = Instance::start(
        &ticker,
        &encode(&json!({"role": "startup", "notify": "kv"})),
        &detached,
    )
    .unwrap();
    let error = task
        .handle_continue(&outputs.continue_with.unwrap(), &detached)
        .unwrap_err();
    assert_unavailable(&error);
}
