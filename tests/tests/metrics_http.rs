//! `/metrics` over HTTP while an install runs: a real `graft start --http` host under
//! traffic, scraped in a loop by a thread from before `graft install 1.1.0` until the new
//! version has handled messages. Every scrape answers; counters never go down from one
//! scrape to the next; `promtool check metrics` accepts the first scrape, the last, and
//! every one taken while the install ran; and from the first to the last the numbers move
//! as they should.
//!
//! Nothing here depends on timing: whether a scrape lands inside the install depends on
//! the machine, so those scrapes are checked when there are some, never required, and
//! every wait polls with a generous deadline.

use graft_tests::scrape::{Scrape, promtool_accepts};
use graft_tests::{Host, Traffic, built_root, eventually_blocking, http_info, http_request};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

const DEADLINE: Duration = Duration::from_secs(120);

/// Scrapes `/metrics` of `address` in a loop until dropped; every scrape kept in order.
struct Scraper {
    stop: Arc<AtomicBool>,
    scrapes: Arc<Mutex<Vec<Scrape>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Scraper {
    fn start(address: String) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let scrapes = Arc::new(Mutex::new(Vec::new()));
        let thread = std::thread::spawn({
            let stop = Arc::clone(&stop);
            let scrapes = Arc::clone(&scrapes);
            move || {
                while !stop.load(Ordering::Relaxed) {
                    let response = http_request(&address, "GET", "/metrics", &[]);
                    assert_eq!(response.status, 200, "{}", response.body);
                    scrapes.lock().unwrap().push(Scrape::parse(response.body));
                    // Paced, so the host's two cores are not all scraping.
                    std::thread::sleep(Duration::from_millis(2));
                }
            }
        });
        Scraper {
            stop,
            scrapes,
            thread: Some(thread),
        }
    }

    fn count(&self) -> usize {
        self.scrapes.lock().unwrap().len()
    }

    /// Whether the latest scrape satisfies `condition`.
    fn latest(&self, condition: impl Fn(&Scrape) -> bool) -> bool {
        self.scrapes.lock().unwrap().last().is_some_and(condition)
    }

    /// Stops scraping; every scrape taken.
    fn finish(mut self) -> Vec<Scrape> {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take()
            && let Err(panic) = thread.join()
        {
            std::panic::resume_unwind(panic);
        }
        std::mem::take(&mut *self.scrapes.lock().unwrap())
    }
}

impl Drop for Scraper {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Whether `name` is a cumulative series: a counter, or a histogram's buckets, count or sum.
fn cumulative(name: &str) -> bool {
    name.ends_with("_total")
        || name.ends_with("_bucket")
        || name.ends_with("_count")
        || name.ends_with("_sum")
}

#[test]
fn a_scrape_during_an_install_over_http_shows_the_numbers_move() {
    let root = built_root();
    let root = root.path();
    let host = Host::start(root, &["--http", "127.0.0.1:0"]);
    let info = http_info(root);
    let address = info["address"].as_str().unwrap().to_owned();
    let traffic = Traffic::start(root);
    let scraper = Scraper::start(address);
    assert!(
        eventually_blocking(DEADLINE, || scraper
            .latest(|scrape| scrape.handled("counter", "1.0.0", "cast") > 0.0)),
        "no scrape counted the casts to counter 1.0.0: {}",
        host.log()
    );

    let began = scraper.count();
    let output = graft_tests::run_graft(root, &["install", "1.1.0"]);
    let installed = scraper.count();
    assert!(
        output.status.success(),
        "graft install 1.1.0: {}\n{}",
        graft_tests::stderr_text(&output),
        host.log()
    );
    // The traffic goes on to the new version, as a scrape begun after the install returned
    // shows (the one in flight then may have begun before).
    assert!(
        eventually_blocking(DEADLINE, || scraper.count() > installed + 1
            && scraper.latest(|scrape| scrape.handled("counter", "1.1.0", "cast") > 0.0)),
        "no scrape counted casts to counter 1.1.0: {}",
        host.log()
    );
    drop(traffic);
    let scrapes = scraper.finish();
    let (first, last) = (&scrapes[0], &scrapes[scrapes.len() - 1]);
    eprintln!(
        "{} scrapes, {} of them while the install ran",
        scrapes.len(),
        installed - began
    );

    // Well-formed: the first, the last, and (up to 8 of) those taken while the install ran.
    promtool_accepts(first);
    promtool_accepts(last);
    for scrape in scrapes[began..installed].iter().take(8) {
        promtool_accepts(scrape);
    }

    // Counters and histograms never go down between two scrapes.
    for (index, pair) in scrapes.windows(2).enumerate() {
        for ((name, labels), value) in &pair[1].samples {
            if !cumulative(name) {
                continue;
            }
            if let Some(before) = pair[0].samples.get(&(name.clone(), labels.clone())) {
                assert!(
                    value >= before,
                    "{name}{labels:?} went down from {before} to {value} between scrapes {index} and {}",
                    index + 1
                );
            }
        }
    }

    // One install, completed, with its duration and its longest pause observed.
    assert_eq!(
        last.upgrades("install", "completed") - first.upgrades("install", "completed"),
        1.0,
        "{}",
        last.text
    );
    for histogram in [
        "graft_upgrade_duration_seconds_count",
        "graft_upgrade_longest_pause_seconds_count",
    ] {
        assert_eq!(
            last.value(histogram, &[("kind", "install")])
                - first.value(histogram, &[("kind", "install")]),
            1.0,
            "{histogram}: {}",
            last.text
        );
    }
    // The release moved; the permanent one did not.
    assert_eq!(first.release("1.0.0", "current"), 1.0, "{}", first.text);
    assert_eq!(last.release("1.1.0", "current"), 1.0, "{}", last.text);
    assert_eq!(last.release("1.0.0", "current"), 0.0, "{}", last.text);
    assert_eq!(last.release("1.0.0", "permanent"), 1.0, "{}", last.text);
    // The counter runs the new version, and nothing runs the old one.
    assert!(last.running("counter", "1.1.0") >= 1.0, "{}", last.text);
    assert_eq!(last.running("counter", "1.0.0"), 0.0, "{}", last.text);
    // The old version's count kept what it had; the libraries of 1.1.0 were loaded.
    assert!(
        last.handled("counter", "1.0.0", "cast") >= first.handled("counter", "1.0.0", "cast"),
        "{}",
        last.text
    );
    assert!(
        last.sum("graft_libraries_loaded_total") > first.sum("graft_libraries_loaded_total"),
        "{}",
        last.text
    );
    // Nothing lost, in the scrapes as in the install's record.
    assert_eq!(
        last.sum("graft_messages_lost_total"),
        first.sum("graft_messages_lost_total"),
        "{}",
        last.text
    );
    drop(host);
}
