//! The shipped systemd units (`systemd/`), checked with systemd's own tools:
//! `systemd-analyze verify` must have nothing at all to say (it exits 0 even on an unknown
//! key, so any output is a failure), `systemd-analyze security --offline=true` must rate
//! herald.service at most 1.5 (raspotify's unit: 1.9), the unit must carry what the daemon
//! relies on (notify, watchdog, credential, directories, real time), and the sysusers.d and
//! tmpfiles.d files must create the user and /run/herald in a scratch root.
//!
//! `verify` insists that ExecStart's binary exists, so it runs on a copy of herald.service in
//! a temporary directory whose ExecStart points at the binary cargo just built
//! (`CARGO_BIN_EXE_herald`); everything else in the copy is unchanged.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use herald::config::{Config, CREDENTIAL_NAME, DEFAULT_PATH};

/// Where the unit expects the installed binary.
const INSTALLED_BIN: &str = "/usr/bin/herald";

fn unit_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("systemd")
}

fn read_unit(name: &str) -> String {
    std::fs::read_to_string(unit_dir().join(name)).unwrap()
}

/// Runs a systemd tool; `None` (with a message) only when the tool is not installed.
fn run(tool: &str, args: &[&str]) -> Option<Output> {
    match Command::new(tool)
        .args(args)
        .env("SYSTEMD_COLORS", "0")
        .output()
    {
        Ok(out) => Some(out),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("SKIPPED: {tool} is not installed (apt-get install systemd)");
            None
        }
        Err(e) => panic!("cannot run {tool}: {e}"),
    }
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A unit file as `(section, key, value)` in file order (repeated keys stay separate).
fn parse_unit(src: &str) -> Vec<(String, String, String)> {
    let mut section = String::new();
    let mut entries = Vec::new();
    for line in src.lines().map(str::trim) {
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        if let Some(name) = line.strip_prefix('[').and_then(|l| l.strip_suffix(']')) {
            section = name.to_string();
            continue;
        }
        let (key, value) = line.split_once('=').unwrap();
        entries.push((section.clone(), key.trim().into(), value.trim().into()));
    }
    entries
}

/// Every value of `section.key`, in file order.
fn values<'a>(unit: &'a [(String, String, String)], section: &str, key: &str) -> Vec<&'a str> {
    unit.iter()
        .filter(|(s, k, _)| s == section && k == key)
        .map(|(_, _, v)| v.as_str())
        .collect()
}

/// The single value of `section.key`; fails if it is missing or set twice.
fn value<'a>(unit: &'a [(String, String, String)], section: &str, key: &str) -> &'a str {
    match values(unit, section, key).as_slice() {
        [v] => v,
        other => panic!("expected exactly one {section}.{key}=, found {other:?}"),
    }
}

/// herald.service and herald.socket copied into `dir`, ExecStart pointing at the built binary.
fn units_with_built_binary(dir: &Path) -> (PathBuf, PathBuf) {
    let service = read_unit("herald.service");
    let exec_start = format!("ExecStart={INSTALLED_BIN} ");
    assert_eq!(service.matches(&exec_start).count(), 1, "{exec_start}");
    let built = env!("CARGO_BIN_EXE_herald");
    let service = service.replace(&exec_start, &format!("ExecStart={built} "));
    let service_path = dir.join("herald.service");
    let socket_path = dir.join("herald.socket");
    std::fs::write(&service_path, service).unwrap();
    std::fs::write(&socket_path, read_unit("herald.socket")).unwrap();
    (service_path, socket_path)
}

#[test]
fn systemd_analyze_verify_has_nothing_to_say_about_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let (service, socket) = units_with_built_binary(dir.path());
    let Some(out) = run(
        "systemd-analyze",
        &[
            "verify",
            service.to_str().unwrap(),
            socket.to_str().unwrap(),
        ],
    ) else {
        return;
    };
    let said = text(&out);
    assert!(
        out.status.success() && said.is_empty(),
        "systemd-analyze verify ({}) said:\n{said}",
        out.status
    );

    // The check above is only worth something if verify does speak up about a mistake: a
    // misspelled key in the same unit must produce output.
    let broken = std::fs::read_to_string(&service)
        .unwrap()
        .replace("WatchdogSec=", "WatchdogSecs=");
    std::fs::write(&service, broken).unwrap();
    let out = run("systemd-analyze", &["verify", service.to_str().unwrap()]).unwrap();
    assert!(
        text(&out).contains("WatchdogSecs"),
        "verify did not report a misspelled key: {}",
        text(&out)
    );
}

/// `systemd-analyze security --offline=true` on the shipped herald.service.
fn security(extra: &[&str]) -> Option<Output> {
    let path = unit_dir().join("herald.service");
    let mut args = vec!["security", "--offline=true", "--no-pager"];
    args.extend_from_slice(extra);
    args.push(path.to_str().unwrap());
    run("systemd-analyze", &args)
}

#[test]
fn security_exposure_is_at_most_1_5() {
    let Some(out) = security(&[]) else { return };
    let table = text(&out);
    let prefix = "Overall exposure level for herald.service: ";
    let score = table
        .lines()
        .find_map(|l| l.split_once(prefix).map(|(_, rest)| rest))
        .unwrap_or_else(|| panic!("no overall exposure line in:\n{table}"));
    let score = score.split_whitespace().next().unwrap();
    // "X.Y": compare in tenths, as systemd computes it.
    let (whole, tenth) = score.split_once('.').unwrap();
    let tenths: u32 = whole.parse::<u32>().unwrap() * 10 + tenth.parse::<u32>().unwrap();
    assert!(
        tenths <= 15,
        "herald.service exposure {score} > 1.5:\n{table}"
    );
}

#[test]
fn security_review_sees_realtime_allowed_only_through_sched_setscheduler() {
    // The audio thread's SCHED_FIFO request must get through systemd's seccomp filter, and
    // the only resource-changing call let through is that one.
    let Some(out) = security(&["--json=short"]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    let items: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let item = |name: &str| {
        items
            .iter()
            .find(|i| i["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in the security review"))
    };
    let resources = item("SystemCallFilter=~@resources")["description"]
        .as_str()
        .unwrap();
    assert!(
        resources.contains("sched_setscheduler is allowed"),
        "{resources}"
    );
    let realtime = item("RestrictRealtime=")["description"].as_str().unwrap();
    assert!(realtime.contains("may acquire realtime"), "{realtime}");
    // Everything else in @privileged stays out.
    let privileged = item("SystemCallFilter=~@privileged")["description"]
        .as_str()
        .unwrap();
    assert!(privileged.contains("is not included"), "{privileged}");
}

#[test]
fn service_declares_what_the_daemon_relies_on() {
    let unit = parse_unit(&read_unit("herald.service"));
    let s = "Service";
    assert_eq!(value(&unit, s, "Type"), "notify");
    assert_eq!(
        value(&unit, s, "ExecStart"),
        format!("{INSTALLED_BIN} serve --config {DEFAULT_PATH}")
    );
    assert_eq!(value(&unit, s, "ExecReload"), "/bin/kill -HUP $MAINPID");
    assert!(value(&unit, s, "WatchdogSec").ends_with('s'));
    assert_eq!(value(&unit, s, "Restart"), "on-failure");
    assert!(!value(&unit, "Unit", "StartLimitIntervalSec").is_empty());
    assert!(
        value(&unit, "Unit", "StartLimitBurst")
            .parse::<u32>()
            .unwrap()
            > 1
    );
    assert_eq!(value(&unit, s, "User"), "herald");
    assert_eq!(value(&unit, s, "Group"), "herald");
    let groups: Vec<&str> = value(&unit, s, "SupplementaryGroups")
        .split_whitespace()
        .collect();
    assert_eq!(groups, ["audio", "gpio"]);
    // systemd copies the key to $CREDENTIALS_DIRECTORY/<name>; herald reads exactly that name.
    assert_eq!(
        value(&unit, s, "LoadCredential"),
        format!("{CREDENTIAL_NAME}:/etc/herald/{CREDENTIAL_NAME}")
    );
    for key in ["RuntimeDirectory", "CacheDirectory", "StateDirectory"] {
        assert_eq!(value(&unit, s, key), "herald", "{key}");
    }
    // `herald check`, run outside the unit, reads the daemon's network model there.
    assert_eq!(
        herald::netmodel::store::SYSTEM_DIR,
        format!("/var/lib/{}", value(&unit, s, "StateDirectory"))
    );
    // Without this, stopping the service would delete herald.socket's socket file.
    assert_eq!(value(&unit, s, "RuntimeDirectoryPreserve"), "yes");
    assert_eq!(value(&unit, "Install", "WantedBy"), "multi-user.target");
    assert_eq!(value(&unit, "Install", "Also"), "herald.socket");
}

#[test]
fn unit_lets_the_default_realtime_priority_through() {
    let unit = parse_unit(&read_unit("herald.service"));
    let wanted = Config::default().audio.realtime_priority;
    let limit: i32 = value(&unit, "Service", "LimitRTPRIO").parse().unwrap();
    assert!(
        wanted <= limit,
        "audio.realtime_priority defaults to {wanted} but LimitRTPRIO={limit} refuses it"
    );
    assert_eq!(value(&unit, "Service", "RestrictRealtime"), "no");
    // The allow-list entry for sched_setscheduler must come after the @resources denial,
    // or the denial removes it again.
    let filters = values(&unit, "Service", "SystemCallFilter");
    let deny = filters.iter().position(|f| {
        f.starts_with('~')
            && f.split_whitespace()
                .any(|g| g.trim_start_matches('~') == "@resources")
    });
    let allow = filters.iter().position(|f| *f == "sched_setscheduler");
    assert!(
        matches!((deny, allow), (Some(d), Some(a)) if a > d),
        "{filters:?}"
    );
}

#[test]
fn socket_lives_in_the_runtime_directory_for_the_herald_group() {
    let socket = parse_unit(&read_unit("herald.socket"));
    let service = parse_unit(&read_unit("herald.service"));
    let listen = Path::new(value(&socket, "Socket", "ListenStream"));
    assert_eq!(listen, Path::new("/run/herald/herald.sock"));
    assert_eq!(
        listen.parent().unwrap(),
        Path::new("/run").join(value(&service, "Service", "RuntimeDirectory"))
    );
    assert_eq!(value(&socket, "Socket", "SocketGroup"), "herald");
    assert_eq!(value(&socket, "Socket", "SocketMode"), "0660");
    assert_eq!(value(&socket, "Socket", "Service"), "herald.service");
    assert_eq!(value(&socket, "Install", "WantedBy"), "sockets.target");
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// `name:…` line of an /etc/passwd- or /etc/group-style file, split at ':'.
fn entry(file: &Path, name: &str) -> Option<Vec<String>> {
    std::fs::read_to_string(file)
        .unwrap()
        .lines()
        .map(|l| l.split(':').map(String::from).collect::<Vec<_>>())
        .find(|f| f[0] == name)
}

#[test]
fn sysusers_and_tmpfiles_create_the_user_and_the_socket_directory() {
    if !is_root() {
        eprintln!("SKIPPED: systemd-sysusers/systemd-tmpfiles --root must run as root");
        return;
    }
    let sysusers = unit_dir().join("herald.sysusers");
    let tmpfiles = unit_dir().join("herald.tmpfiles");

    // A Raspberry Pi OS root: the gpio group already exists and must stay as it is.
    let root = tempfile::tempdir().unwrap();
    let etc = root.path().join("etc");
    std::fs::create_dir(&etc).unwrap();
    std::fs::write(etc.join("passwd"), "root:x:0:0:root:/root:/bin/bash\n").unwrap();
    std::fs::write(etc.join("group"), "root:x:0:\naudio:x:29:\ngpio:x:997:pi\n").unwrap();
    let root_arg = format!("--root={}", root.path().display());
    let Some(out) = run("systemd-sysusers", &[&root_arg, sysusers.to_str().unwrap()]) else {
        return;
    };
    assert!(out.status.success(), "{}", text(&out));
    let user = entry(&etc.join("passwd"), "herald").expect("no herald user");
    assert_eq!(user[5], "/var/lib/herald");
    assert!(user[6].ends_with("nologin"), "{user:?}");
    let group = entry(&etc.join("group"), "herald").expect("no herald group");
    assert_eq!(group[2], user[3], "herald's primary group");
    assert_eq!(
        entry(&etc.join("group"), "gpio").unwrap(),
        ["gpio", "x", "997", "pi"]
    );

    // /run/herald exists with its final owner before herald.socket puts the socket there.
    let out = run(
        "systemd-tmpfiles",
        &[&root_arg, "--create", tmpfiles.to_str().unwrap()],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(root.path().join("run/herald")).unwrap();
    assert!(meta.is_dir());
    assert_eq!(meta.mode() & 0o7777, 0o750);
    assert_eq!(meta.uid().to_string(), user[2]);
    assert_eq!(meta.gid().to_string(), group[2]);

    // A plain Debian root has no gpio group: it is created, so the service can start.
    let bare = tempfile::tempdir().unwrap();
    std::fs::create_dir(bare.path().join("etc")).unwrap();
    let out = run(
        "systemd-sysusers",
        &[
            &format!("--root={}", bare.path().display()),
            sysusers.to_str().unwrap(),
        ],
    )
    .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    assert!(entry(&bare.path().join("etc/group"), "gpio").is_some());
}
