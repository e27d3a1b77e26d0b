//! Buttons: debounce and short/long press decisions on synthetic edge sequences (bounce
//! trains, holds at the threshold), through the pure detector and through the real
//! `ButtonService` loop fed by the simulated source (which stands in for GPIO hardware);
//! config validation; and the rppal backend's error off a Raspberry Pi.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use herald::buttons::config::{
    validate, wiring_warnings, ButtonConfig, ButtonConfigError, LongAction, Pull, WhilePlaying,
    DEFAULT_PRESS_EXPIRY,
};
use herald::buttons::rppal::RppalSource;
use herald::buttons::sim::SimSource;
use herald::buttons::{
    action_for, ButtonAction, ButtonError, ButtonEvent, ButtonService, DetectorConfig, Level,
    PinSetup, PressDetector,
};
use herald::presets::{PresetConfig, PresetError};
use proptest::prelude::*;

const PIN: u8 = 17;

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

fn cfg(long: Option<u64>) -> DetectorConfig {
    DetectorConfig {
        pin: PIN,
        active: Level::Low,
        debounce: ms(30),
        long_press: long.map(ms),
    }
}

/// Drives a detector with `(ms since t0, level)` edges, ticking at every deadline until
/// `end_ms`, like the service does. Returns the events with the time they fired.
fn run(
    cfg: DetectorConfig,
    initial: Level,
    edges: &[(u64, Level)],
    end_ms: u64,
) -> Vec<(u64, ButtonEvent)> {
    let t0 = Instant::now();
    let mut d = PressDetector::new(cfg, initial, t0);
    let mut out = Vec::new();
    let mut fired = Vec::new();
    let mut collect = |out: &mut Vec<ButtonEvent>, at: Instant| {
        for e in out.drain(..) {
            fired.push(((at - t0).as_millis() as u64, e));
        }
    };
    let mut inputs: Vec<Option<(u64, Level)>> = edges.iter().copied().map(Some).collect();
    inputs.push(None);
    for input in inputs {
        let next_at = input.map_or(end_ms, |(t, _)| t);
        while let Some(deadline) = d.next_deadline() {
            if deadline > t0 + ms(next_at) {
                break;
            }
            d.tick(deadline, &mut out);
            collect(&mut out, deadline);
        }
        match input {
            Some((t, level)) => {
                d.on_edge(level, t0 + ms(t), &mut out);
                collect(&mut out, t0 + ms(t));
            }
            None => {
                d.tick(t0 + ms(end_ms), &mut out);
                collect(&mut out, t0 + ms(end_ms));
            }
        }
    }
    fired
}

use Level::{High as H, Low as L};

#[test]
fn a_bounce_train_on_press_and_release_is_one_press_fired_after_the_debounce() {
    // Active low, idle high: contact bounce for 5 ms each way.
    let edges = [
        (100, L),
        (101, H),
        (102, L),
        (104, H),
        (105, L),
        (400, H),
        (401, L),
        (403, H),
        (404, L),
        (405, H),
    ];
    let fired = run(cfg(None), H, &edges, 2000);
    // Without a long press the short action fires as soon as the press is confirmed: 30 ms
    // after the last bounce of the press.
    assert_eq!(fired, vec![(135, ButtonEvent::Short(PIN))]);
}

#[test]
fn glitches_shorter_than_the_debounce_never_press() {
    let edges = [(100, L), (129, H), (300, L), (301, H), (500, L), (510, H)];
    assert!(run(cfg(None), H, &edges, 2000).is_empty());
    assert!(run(cfg(Some(800)), H, &edges, 2000).is_empty());
}

#[test]
fn with_a_long_press_configured_a_short_press_fires_on_release() {
    let fired = run(
        cfg(Some(1000)),
        H,
        &[(100, L), (102, H), (103, L), (400, H)],
        3000,
    );
    assert_eq!(fired, vec![(430, ButtonEvent::Short(PIN))]);
}

#[test]
fn holds_below_at_and_above_the_threshold() {
    // Press confirmed from its edge at 100; the hold is measured edge to edge.
    let hold = |h: u64| run(cfg(Some(1000)), H, &[(100, L), (100 + h, H)], 5000);
    assert_eq!(hold(999), vec![(1129, ButtonEvent::Short(PIN))]);
    // Exactly at the threshold counts as long, and fires at the threshold, not on release.
    assert_eq!(hold(1000), vec![(1100, ButtonEvent::Long(PIN))]);
    assert_eq!(hold(1001), vec![(1100, ButtonEvent::Long(PIN))]);
    // A long hold fires once, while still held, and the release adds nothing.
    assert_eq!(hold(4000), vec![(1100, ButtonEvent::Long(PIN))]);
}

#[test]
fn a_release_bounce_right_before_the_threshold_is_not_a_release() {
    // The contact chatters at 1090..1095 but the button stays down: still a long press, fired
    // once the level is back to pressed.
    let fired = run(
        cfg(Some(1000)),
        H,
        &[(100, L), (1090, H), (1095, L), (3000, H)],
        5000,
    );
    assert_eq!(fired, vec![(1100, ButtonEvent::Long(PIN))]);
}

#[test]
fn active_high_buttons_press_on_the_rising_edge() {
    let mut c = cfg(None);
    c.active = H;
    let fired = run(c, L, &[(100, H), (101, L), (102, H), (500, L)], 1000);
    assert_eq!(fired, vec![(132, ButtonEvent::Short(PIN))]);
    // The same edges mean nothing to an active-low button idling low: a release first.
    assert!(run(cfg(None), L, &[(100, H), (101, L), (102, H)], 1000).is_empty());
}

#[test]
fn a_button_held_at_start_is_ignored_until_released() {
    let fired = run(cfg(Some(500)), L, &[(2000, H), (3000, L), (3100, H)], 5000);
    // The stuck press neither goes short nor long; the next real press counts.
    assert_eq!(fired, vec![(3130, ButtonEvent::Short(PIN))]);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]
    /// Any bounce train (gaps under the debounce) around a hold gives exactly one event:
    /// long if the hold reached the threshold, short otherwise.
    #[test]
    fn any_bounce_train_is_one_event(
        press_gaps in prop::collection::vec(1u64..29, 0..8),
        release_gaps in prop::collection::vec(1u64..29, 0..8),
        long_hold in any::<bool>(),
        extra in 0u64..2000,
    ) {
        let threshold = 1000u64;
        let mut edges = Vec::new();
        let mut t = 100u64;
        let mut level = L;
        edges.push((t, level));
        // An even number of extra bounces keeps the train ending "pressed".
        for g in press_gaps.iter().take(press_gaps.len() / 2 * 2) {
            t += g;
            level = if level == L { H } else { L };
            edges.push((t, level));
        }
        let pressed_at = t;
        let release_train: u64 = release_gaps.iter().take(release_gaps.len() / 2 * 2).sum();
        let hold = if long_hold {
            threshold + extra
        } else {
            // Keep the whole release train before the threshold.
            (threshold - release_train - 1).saturating_sub(extra % 900).max(31)
        };
        t = pressed_at + hold;
        level = H;
        edges.push((t, level));
        for g in release_gaps.iter().take(release_gaps.len() / 2 * 2) {
            t += g;
            level = if level == L { H } else { L };
            edges.push((t, level));
        }
        let fired = run(cfg(Some(threshold)), H, &edges, t + 5000);
        let expected = if long_hold {
            (pressed_at + threshold, ButtonEvent::Long(PIN))
        } else {
            (t + 30, ButtonEvent::Short(PIN))
        };
        prop_assert_eq!(fired, vec![expected]);
    }
}

fn button(pin: u8, preset: &str) -> ButtonConfig {
    toml::from_str(&format!("pin = {pin}\npreset = \"{preset}\"")).unwrap()
}

fn presets(names: &[&str]) -> BTreeMap<String, PresetConfig> {
    names
        .iter()
        .map(|n| {
            let p: PresetConfig = toml::from_str("text = \"Dinner is ready.\"").unwrap();
            (n.to_string(), p)
        })
        .collect()
}

#[test]
fn button_config_defaults_and_long_press_forms() {
    let b = button(4, "dinner");
    assert_eq!(b.debounce_ms, 30);
    assert_eq!(b.pull, Pull::Up);
    assert_eq!(b.while_playing, WhilePlaying::Ignore);
    assert!(b.long_press.is_none());
    let b: ButtonConfig =
        toml::from_str("pin = 4\npreset = \"a\"\nlong_press = { ms = 1500, action = \"stop\" }")
            .unwrap();
    assert_eq!(b.long_press.unwrap().action, LongAction::Stop);
    let b: ButtonConfig =
        toml::from_str("pin = 4\npreset = \"a\"\nlong_press = { ms = 1500, preset = \"b\" }")
            .unwrap();
    assert_eq!(b.long_press.unwrap().action, LongAction::Preset("b".into()));
    let err = toml::from_str::<ButtonConfig>(
        "pin = 4\npreset = \"a\"\nlong_press = { ms = 1500, action = \"reboot\" }",
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("'reboot'") && err.contains("\"skip\""),
        "{err}"
    );
    let err = toml::from_str::<ButtonConfig>("pin = 4\npreset = \"a\"\npull = \"sideways\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("sideways"), "{err}");
}

#[test]
fn a_pin_used_twice_is_rejected_naming_both_buttons() {
    let p = presets(&["dinner", "leaving"]);
    let err = validate(&[button(17, "dinner"), button(17, "leaving")], p.keys()).unwrap_err();
    assert!(matches!(
        err,
        ButtonConfigError::PinConflict { pin: 17, .. }
    ));
    let msg = err.to_string();
    assert!(msg.contains("dinner") && msg.contains("leaving"), "{msg}");
    assert!(validate(&[button(17, "dinner"), button(27, "leaving")], p.keys()).is_ok());
}

#[test]
fn pins_beyond_the_header_are_rejected() {
    let p = presets(&["dinner"]);
    let err = validate(&[button(28, "dinner")], p.keys()).unwrap_err();
    assert!(err.to_string().contains("0 to 27"), "{err}");
    assert!(validate(&[button(0, "dinner")], p.keys()).is_ok());
}

#[test]
fn missing_presets_empty_text_and_bad_long_press_are_config_errors() {
    let p = presets(&["dinner"]);
    let msg = validate(&[button(4, "supper")], p.keys())
        .unwrap_err()
        .to_string();
    assert!(msg.contains("'supper'") && msg.contains("dinner"), "{msg}");

    let b: ButtonConfig =
        toml::from_str("pin = 4\npreset = \"dinner\"\nlong_press = { ms = 900, preset = \"x\" }")
            .unwrap();
    let msg = validate(&[b], p.keys()).unwrap_err().to_string();
    assert!(msg.contains("long_press preset 'x'"), "{msg}");

    let b: ButtonConfig = toml::from_str(
        "pin = 4\npreset = \"dinner\"\ndebounce_ms = 50\nlong_press = { ms = 50, action = \"skip\" }",
    )
    .unwrap();
    assert!(matches!(
        validate(&[b], p.keys()),
        Err(ButtonConfigError::LongPress { .. })
    ));

    let mut empty = presets(&["blank"]);
    empty.get_mut("blank").unwrap().text = "  \n".into();
    assert!(matches!(
        herald::presets::validate(&empty),
        Err(PresetError::EmptyText { .. })
    ));
    let mut bad = presets(&["dinner"]);
    bad.get_mut("dinner").unwrap().voice = Some("robot".into());
    // Speech options are checked once, with the [speech] defaults applied.
    let defaults = herald::config::Config::default().default_voice();
    let msg = herald::presets::requests(&bad, &defaults)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("dinner") && msg.contains("robot"), "{msg}");
    assert!(matches!(
        herald::presets::validate(&presets(&["two words"])),
        Err(PresetError::BadName { .. })
    ));
}

#[test]
fn suspicious_wiring_is_warned_about() {
    let mut b = button(4, "dinner");
    assert!(wiring_warnings(&[b.clone()]).is_empty());
    b.active = herald::buttons::config::ActiveLevel::High;
    let w = wiring_warnings(&[b]);
    assert_eq!(w.len(), 1);
    assert!(w[0].contains("pull = \"down\""), "{}", w[0]);
}

/// The service's real loop over the simulated source: edges in, actions out.
#[test]
fn the_service_turns_presses_into_actions() {
    let t0 = Instant::now();
    let (source, sim) = SimSource::new(BTreeMap::from([(17, H), (27, H)]), t0);
    let mut dinner = button(17, "dinner");
    dinner.while_playing = WhilePlaying::Restart;
    let leaving: ButtonConfig = toml::from_str(
        "pin = 27\npreset = \"leaving\"\nlong_press = { ms = 1000, action = \"stop\" }\nvolume = 35\nexpires_in_s = 5",
    )
    .unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(8);
    let service = ButtonService::new(Box::new(source), &[dinner, leaving], tx, t0).unwrap();
    let thread = service.spawn().unwrap();

    let at = |n: u64| t0 + ms(n);
    // Pin 17: a bouncy press.
    sim.edge(17, L, at(100));
    sim.edge(17, H, at(101));
    sim.edge(17, L, at(102));
    sim.advance(at(300));
    assert_eq!(
        rx.blocking_recv(),
        Some(ButtonAction::Preset {
            name: "dinner".into(),
            pin: 17,
            while_playing: WhilePlaying::Restart,
            volume: None,
            expires_in_s: DEFAULT_PRESS_EXPIRY,
            to: None,
            chime: None,
        })
    );
    sim.edge(17, H, at(400));
    // Pin 27: held past the threshold → stop, fired by the clock (no edge at 1500).
    sim.edge(27, L, at(500));
    sim.advance(at(3000));
    assert_eq!(rx.blocking_recv(), Some(ButtonAction::Stop { pin: 27 }));
    sim.edge(27, H, at(3100));
    // Pin 27: a short press → its preset, on release.
    sim.edge(27, L, at(4000));
    sim.edge(27, H, at(4200));
    sim.advance(at(5000));
    assert_eq!(
        rx.blocking_recv(),
        Some(ButtonAction::Preset {
            name: "leaving".into(),
            pin: 27,
            while_playing: WhilePlaying::Ignore,
            volume: Some("35".parse().unwrap()),
            expires_in_s: "5".parse().unwrap(),
            to: None,
            chime: None,
        })
    );
    // Closing the source ends the service cleanly, with nothing else sent.
    drop(sim);
    thread.join().unwrap().unwrap();
    assert_eq!(rx.blocking_recv(), None);
}

#[test]
fn the_rppal_backend_off_a_pi_names_the_cause() {
    let model = std::fs::read_to_string("/proc/device-tree/model").unwrap_or_default();
    if model.contains("Raspberry Pi") {
        eprintln!("skipped: this is a Raspberry Pi ({model})");
        return;
    }
    let err = RppalSource::open(&[PinSetup {
        pin: 17,
        pull: Pull::Up,
    }])
    .unwrap_err();
    assert!(matches!(err, ButtonError::NotAPi { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("not a recognised Raspberry Pi") && msg.contains("Unknown Raspberry Pi model"),
        "{msg}"
    );
}

#[test]
fn the_permission_error_says_which_group_to_join() {
    // What the daemon logs when /dev/gpiomem is not accessible (cannot be provoked here).
    let err = herald::buttons::rppal::map_error(
        rppal::gpio::Error::PermissionDenied("/dev/gpiochip0".into()),
        None,
    );
    let msg = err.to_string();
    assert!(
        msg.contains("/dev/gpiochip0") && msg.contains("gpio group"),
        "{msg}"
    );
}

#[test]
fn a_press_asks_for_the_buttons_volume_and_expires_after_30_s_unless_the_button_says() {
    use herald::protocol::{PresetRequest, Request};
    let plain = button(17, "dinner");
    let Request::Preset(PresetRequest {
        volume,
        expires_in_s,
        while_playing,
        ..
    }) = action_for(&plain, ButtonEvent::Short(17)).request()
    else {
        panic!("a short press plays its preset")
    };
    // Someone at the button wants it now: a press that cannot start within 30 s is dropped.
    assert_eq!(expires_in_s.map(|e| e.secs()), Some(30.0));
    assert_eq!(volume, None, "the preset's (or audio.volume) decides");
    assert_eq!(while_playing, Some(WhilePlaying::Ignore));
    let own: ButtonConfig = toml::from_str(
        "pin = 5\npreset = \"bus\"\nvolume = 20\nexpires_in_s = 4.5\nlong_press = { ms = 900, preset = \"dinner\" }",
    )
    .unwrap();
    for ev in [ButtonEvent::Short(5), ButtonEvent::Long(5)] {
        let Request::Preset(p) = action_for(&own, ev).request() else {
            panic!("{ev:?} plays a preset")
        };
        assert_eq!(p.volume.map(|v| v.get()), Some(20), "{ev:?}");
        assert_eq!(p.expires_in_s.map(|e| e.secs()), Some(4.5), "{ev:?}");
    }
    let e = toml::from_str::<ButtonConfig>("pin = 5\npreset = \"bus\"\nexpires_in_s = 0")
        .unwrap_err()
        .to_string();
    assert!(e.contains("expires_in_s 0 is not allowed"), "{e}");
}
