//! The Debian package and the fleet deployment, checked with the real tools:
//!
//! - `cargo deb` (cargo-deb) packages herald for the host; the .deb's name, control fields,
//!   file list, modes, owners, conffiles and maintainer scripts are read back with `dpkg-deb`,
//!   and the units *inside the package* pass `systemd-analyze verify`.
//! - The maintainer scripts from the package run in a scratch root (`DPKG_ROOT`) with
//!   stand-ins for systemd's tools (systemd is not PID 1 here), which record what the scripts
//!   asked for: user before chown, enable always, start only with a key, restart on upgrade,
//!   stop on remove, user data gone on purge.
//! - The Ansible playbook passes `ansible-playbook --syntax-check` and `ansible-lint`.
//!
//! To stay fast, the package is built with `cargo deb --no-build` around the binary this
//! test run already built (the debug build, copied where cargo-deb expects the release one):
//! packaging, not optimisation, is under test, and both builds need the same libraries.
//! Missing tools are reported as SKIPPED; scripts/ci-extras.sh installs them for CI.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Whether `tool` runs at all; prints SKIPPED with the way to get it when not.
fn have(tool: &str, args: &[&str], install: &str) -> bool {
    let ok = Command::new(tool)
        .args(args)
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("SKIPPED: `{tool}` is not available ({install}; scripts/ci-extras.sh does it)");
    }
    ok
}

/// The built package: a directory kept for the whole test run, and the .deb in it.
struct Deb {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

/// Builds the .deb once per test run; `None` when cargo-deb or dpkg-deb is missing.
fn deb() -> Option<&'static Deb> {
    static DEB: OnceLock<Option<Deb>> = OnceLock::new();
    DEB.get_or_init(|| {
        if !have(
            "cargo-deb",
            &["--version"],
            "cargo install cargo-deb --locked",
        ) || !have("dpkg-deb", &["--version"], "apt-get install dpkg")
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let release = dir.path().join("release");
        fs::create_dir_all(&release).unwrap();
        fs::copy(env!("CARGO_BIN_EXE_herald"), release.join("herald")).unwrap();
        let out_dir = dir.path().join("out");
        let out = Command::new("cargo-deb")
            // The workspace's firmware package, never the emulator crate beside it.
            .args(["--package", "herald", "--no-build", "--fast", "--output"])
            .arg(&out_dir)
            .current_dir(manifest_dir())
            .env("CARGO_TARGET_DIR", dir.path())
            .output()
            .unwrap();
        assert!(out.status.success(), "cargo deb failed:\n{}", text(&out));
        let debs: Vec<PathBuf> = fs::read_dir(&out_dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "deb"))
            .collect();
        assert_eq!(debs.len(), 1, "expected one .deb, got {debs:?}");
        Some(Deb {
            path: debs[0].clone(),
            _dir: dir,
        })
    })
    .as_ref()
}

fn dpkg_deb(args: &[&str], deb: &Path) -> String {
    let out = Command::new("dpkg-deb")
        .args(args)
        .arg(deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "dpkg-deb {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn host_arch() -> String {
    let out = Command::new("dpkg")
        .arg("--print-architecture")
        .output()
        .unwrap();
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

#[test]
fn package_is_named_herald_version_arch_and_depends_on_alsa_opus_and_systemd() {
    let Some(deb) = deb() else { return };
    let arch = host_arch();
    let version = env!("CARGO_PKG_VERSION");
    assert_eq!(
        deb.path.file_name().unwrap().to_str().unwrap(),
        format!("herald_{version}_{arch}.deb")
    );
    let field = |name: &str| {
        dpkg_deb(&["-f"], &deb.path).lines().find_map(|l| {
            l.strip_prefix(&format!("{name}: "))
                .map(|v| v.trim().to_string())
        })
    };
    assert_eq!(field("Package").as_deref(), Some("herald"));
    assert_eq!(field("Version").as_deref(), Some(version));
    assert_eq!(field("Architecture").as_deref(), Some(arch.as_str()));
    let depends = field("Depends").unwrap();
    // dpkg-shlibdeps read the binary's NEEDED libraries: ALSA, Opus and libsonic (the
    // playout's time-stretcher) must be there, versioned, next to what the maintainer
    // scripts call.
    for want in [
        "libasound2 (>=",
        "libopus0 (>=",
        "libsonic0 (>=",
        "libc6 (>=",
        "systemd",
        "init-system-helpers",
        // The fallback voice is a program herald runs, so no shlibdeps line names it.
        "espeak-ng (>=",
    ] {
        assert!(depends.contains(want), "Depends lacks {want}: {depends}");
    }
    // Nothing links libespeak-ng (GPL-3.0): the fallback stays a separate program.
    assert!(!depends.contains("libespeak-ng"), "{depends}");
}

/// `dpkg-deb -c` as (mode, owner, path) for files.
fn listing(deb: &Path) -> Vec<(String, String, String)> {
    dpkg_deb(&["-c"], deb)
        .lines()
        .filter(|l| !l.starts_with('d'))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].to_string(),
                f[1].to_string(),
                f[5].trim_start_matches('.').to_string(),
            )
        })
        .collect()
}

#[test]
fn package_installs_binary_units_sysusers_tmpfiles_and_a_private_config() {
    let Some(deb) = deb() else { return };
    let files = listing(&deb.path);
    let expect = [
        ("-rwxr-xr-x", "/usr/bin/herald"),
        ("-rw-r--r--", "/usr/lib/systemd/system/herald.service"),
        ("-rw-r--r--", "/usr/lib/systemd/system/herald.socket"),
        ("-rw-r--r--", "/usr/lib/sysusers.d/herald.conf"),
        ("-rw-r--r--", "/usr/lib/tmpfiles.d/herald.conf"),
        // Not world-readable; postinst gives it to the herald group.
        ("-rw-r-----", "/etc/herald/herald.toml"),
        ("-rw-r--r--", "/usr/share/doc/herald/SYSTEMD.md"),
        ("-rw-r--r--", "/usr/share/doc/herald/INSTALL.md"),
        (
            "-rw-r--r--",
            "/usr/share/doc/herald/examples/alsa/max98357a.conf",
        ),
        // The default chime the example config names.
        ("-rw-r--r--", "/usr/share/herald/chimes/ding.wav"),
    ];
    for (mode, path) in expect {
        let found = files.iter().find(|(_, _, p)| p == path);
        let Some((m, owner, _)) = found else {
            panic!("{path} missing from the package: {files:#?}")
        };
        assert_eq!(m, mode, "mode of {path}");
        // cargo-deb writes numeric ids without names: 0/0 is root.
        assert!(
            owner == "0/0" || owner == "root/root",
            "owner of {path}: {owner}"
        );
    }
    // The key is never shipped, and the emulator is a test tool, not part of the appliance.
    for (_, _, p) in &files {
        assert!(
            !p.contains("openai_api_key") && !p.contains("emulator"),
            "{p}"
        );
    }
    let bins: Vec<&str> = files
        .iter()
        .filter_map(|(_, _, p)| p.strip_prefix("/usr/bin/"))
        .collect();
    assert_eq!(bins, ["herald"], "the only program installed is herald");
    // Files shipped byte for byte as in the repository.
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb.path)
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    for (repo, installed) in [
        (
            "systemd/herald.service",
            "usr/lib/systemd/system/herald.service",
        ),
        ("systemd/herald.sysusers", "usr/lib/sysusers.d/herald.conf"),
        ("deploy/herald.toml", "etc/herald/herald.toml"),
    ] {
        assert_eq!(
            fs::read(manifest_dir().join(repo)).unwrap(),
            fs::read(dir.path().join(installed)).unwrap(),
            "{installed} differs from {repo}"
        );
    }
}

/// The control area (conffiles, maintainer scripts) unpacked into a temporary directory.
fn control(deb: &Deb) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-e")
        .arg(&deb.path)
        .arg(dir.path().join("DEBIAN"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    dir
}

#[test]
fn config_is_a_conffile_and_maintainer_scripts_are_the_reviewed_ones() {
    let Some(deb) = deb() else { return };
    let ctl = control(deb);
    let conffiles = fs::read_to_string(ctl.path().join("DEBIAN/conffiles")).unwrap();
    assert_eq!(
        conffiles.lines().collect::<Vec<_>>(),
        ["/etc/herald/herald.toml"]
    );
    for script in ["postinst", "prerm", "postrm"] {
        let packaged = ctl.path().join("DEBIAN").join(script);
        let mode = fs::metadata(&packaged).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o755, "{script} mode {mode:o}");
        assert_eq!(
            fs::read_to_string(&packaged).unwrap(),
            fs::read_to_string(manifest_dir().join("deploy/debian").join(script)).unwrap(),
            "{script} in the package differs from deploy/debian/{script}"
        );
        let out = Command::new("sh")
            .arg("-n")
            .arg(&packaged)
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out));
    }
}

#[test]
fn units_inside_the_package_pass_systemd_analyze_verify() {
    let Some(deb) = deb() else { return };
    if !have("systemd-analyze", &["--version"], "apt-get install systemd") {
        return;
    }
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb.path)
        .arg(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
    let units = root.path().join("usr/lib/systemd/system");
    // verify wants ExecStart's binary to exist: point it at the packaged one.
    let packaged_bin = root.path().join("usr/bin/herald");
    let service = fs::read_to_string(units.join("herald.service"))
        .unwrap()
        .replace(
            "ExecStart=/usr/bin/herald ",
            &format!("ExecStart={} ", packaged_bin.display()),
        );
    assert!(service.contains(&*packaged_bin.to_string_lossy()));
    fs::write(units.join("herald.service"), service).unwrap();
    let out = Command::new("systemd-analyze")
        .env("SYSTEMD_COLORS", "0")
        .arg("verify")
        .arg(units.join("herald.service"))
        .arg(units.join("herald.socket"))
        .output()
        .unwrap();
    assert!(
        out.status.success() && text(&out).is_empty(),
        "systemd-analyze verify on the packaged units said:\n{}",
        text(&out)
    );
}

/// A scratch root plus a PATH of stand-ins for the tools the maintainer scripts call
/// (systemd-sysusers, systemd-tmpfiles, deb-systemd-helper, deb-systemd-invoke, systemctl,
/// dpkg-statoverride, chown, chmod): each appends its name and arguments to `calls`.
struct ScriptRoot {
    dir: tempfile::TempDir,
    scripts: tempfile::TempDir,
}

impl ScriptRoot {
    fn new(deb: &Deb, with_key: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        for d in [
            "etc/herald",
            "run/systemd/system",
            "var/lib/herald",
            "var/cache/herald",
        ] {
            fs::create_dir_all(root.join(d)).unwrap();
        }
        fs::write(root.join("etc/herald/herald.toml"), "").unwrap();
        if with_key {
            fs::write(root.join("etc/herald/openai_api_key"), "sk-test").unwrap();
        }
        let bin = dir.path().join("bin");
        fs::create_dir_all(&bin).unwrap();
        let log = dir.path().join("calls");
        for tool in [
            "systemd-sysusers",
            "systemd-tmpfiles",
            "deb-systemd-helper",
            "deb-systemd-invoke",
            "systemctl",
            "dpkg-statoverride",
            "chown",
            "chmod",
        ] {
            // dpkg-statoverride --list exits 1: no override set by the admin.
            let status = if tool == "dpkg-statoverride" { 1 } else { 0 };
            let shim = bin.join(tool);
            fs::write(
                &shim,
                format!(
                    "#!/bin/sh\necho \"{tool} $*\" >> '{}'\nexit {status}\n",
                    log.display()
                ),
            )
            .unwrap();
            fs::set_permissions(&shim, fs::Permissions::from_mode(0o755)).unwrap();
        }
        ScriptRoot {
            dir,
            scripts: control(deb),
        }
    }

    fn root(&self) -> PathBuf {
        self.dir.path().join("root")
    }

    /// Runs a packaged maintainer script; returns (success, stdout, calls made).
    fn run(&self, script: &str, args: &[&str]) -> (bool, String, Vec<String>) {
        let path = format!(
            "{}:{}",
            self.dir.path().join("bin").display(),
            std::env::var("PATH").unwrap()
        );
        let out = Command::new("sh")
            .arg(self.scripts.path().join("DEBIAN").join(script))
            .args(args)
            .env("PATH", path)
            .env("DPKG_ROOT", self.root())
            .output()
            .unwrap();
        let calls = fs::read_to_string(self.dir.path().join("calls"))
            .unwrap_or_default()
            .lines()
            .map(|l| l.replace(&*self.root().to_string_lossy(), "$ROOT"))
            .collect();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            calls,
        )
    }
}

fn position(calls: &[String], prefix: &str) -> Option<usize> {
    calls.iter().position(|c| c.starts_with(prefix))
}

#[test]
fn first_install_without_key_enables_but_does_not_start_and_says_how_to_set_the_key() {
    let Some(deb) = deb() else { return };
    let env = ScriptRoot::new(deb, false);
    let (ok, stdout, calls) = env.run("postinst", &["configure", ""]);
    assert!(ok, "postinst failed: {calls:#?}");
    let sysusers = position(&calls, "systemd-sysusers").expect("no systemd-sysusers");
    let chown = position(&calls, "chown root:herald $ROOT/etc/herald/herald.toml")
        .unwrap_or_else(|| panic!("config not given to the herald group: {calls:#?}"));
    assert!(
        sysusers < chown,
        "group used before it is created: {calls:#?}"
    );
    assert!(calls.contains(&"chmod 0640 $ROOT/etc/herald/herald.toml".to_string()));
    for unit in ["herald.socket", "herald.service"] {
        assert!(
            calls.contains(&format!("deb-systemd-helper enable {unit}")),
            "{unit} not enabled: {calls:#?}"
        );
    }
    assert!(
        position(&calls, "deb-systemd-invoke").is_none(),
        "started without a key: {calls:#?}"
    );
    assert!(
        stdout.contains("/etc/herald/openai_api_key") && stdout.contains("systemctl start"),
        "no next step printed: {stdout}"
    );
}

#[test]
fn install_with_key_starts_and_upgrade_restarts() {
    let Some(deb) = deb() else { return };
    let fresh = ScriptRoot::new(deb, true);
    let (ok, stdout, calls) = fresh.run("postinst", &["configure", ""]);
    assert!(ok, "{calls:#?}");
    assert!(calls.contains(&"deb-systemd-invoke start herald.socket".to_string()));
    assert!(calls.contains(&"deb-systemd-invoke start herald.service".to_string()));
    assert!(!stdout.contains("no OpenAI API key"), "{stdout}");

    let upgrade = ScriptRoot::new(deb, true);
    let (ok, _, calls) = upgrade.run("postinst", &["configure", "0.0.9"]);
    assert!(ok, "{calls:#?}");
    assert!(
        calls.contains(&"deb-systemd-invoke restart herald.service".to_string()),
        "upgrade did not restart herald: {calls:#?}"
    );
}

#[test]
fn prerm_stops_on_remove_only_and_purge_removes_key_and_data() {
    let Some(deb) = deb() else { return };
    let env = ScriptRoot::new(deb, true);
    let (ok, _, calls) = env.run("prerm", &["upgrade", "0.2.0"]);
    assert!(
        ok && calls.is_empty(),
        "upgrade must not stop herald: {calls:#?}"
    );
    let (ok, _, calls) = env.run("prerm", &["remove"]);
    assert!(ok);
    assert!(
        calls.contains(&"deb-systemd-invoke stop herald.service herald.socket".to_string()),
        "{calls:#?}"
    );

    let (ok, _, _) = env.run("postrm", &["remove"]);
    assert!(ok);
    assert!(env.root().join("etc/herald/openai_api_key").exists());
    assert!(env.root().join("var/lib/herald").exists());
    let (ok, _, calls) = env.run("postrm", &["purge"]);
    assert!(ok, "{calls:#?}");
    for gone in [
        "etc/herald/openai_api_key",
        "var/lib/herald",
        "var/cache/herald",
    ] {
        assert!(!env.root().join(gone).exists(), "{gone} survived purge");
    }
    assert!(calls.contains(&"deb-systemd-helper purge herald.service herald.socket".to_string()));
}

fn ansible_dir() -> PathBuf {
    manifest_dir().join("deploy/ansible")
}

#[test]
fn ansible_playbook_passes_syntax_check() {
    if !have(
        "ansible-playbook",
        &["--version"],
        "pip install ansible-core",
    ) {
        return;
    }
    let out = Command::new("ansible-playbook")
        .args(["--syntax-check", "-i", "inventory.example.ini", "site.yml"])
        .current_dir(ansible_dir())
        .env("ANSIBLE_NOCOLOR", "1")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn ansible_lint_finds_nothing() {
    if !have("ansible-lint", &["--version"], "pip install ansible-lint") {
        return;
    }
    let out = Command::new("ansible-lint")
        .args(["--nocolor", "site.yml"])
        .current_dir(ansible_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", text(&out));
}

#[test]
fn deploy_scripts_parse() {
    for script in ["deploy/cross-build.sh", "deploy/install-over-ssh.sh"] {
        let out = Command::new("bash")
            .arg("-n")
            .arg(manifest_dir().join(script))
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", text(&out));
    }
}

/// The packaged chime is the project's own: scripts/make-chime.py synthesises it, and the
/// committed file is exactly what the script makes (so its licence is ours, and a change
/// to the sound goes through the script).
#[test]
fn the_default_chime_is_what_the_script_makes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("ding.wav");
    let run = Command::new("python3")
        .arg(root.join("scripts/make-chime.py"))
        .arg(&out)
        .output()
        .unwrap();
    assert!(run.status.success(), "{}", text(&run));
    let made = std::fs::read(&out).unwrap();
    let committed = std::fs::read(root.join("deploy/chimes/ding.wav")).unwrap();
    assert!(
        made == committed,
        "deploy/chimes/ding.wav differs from what scripts/make-chime.py makes: re-run the script"
    );
}
