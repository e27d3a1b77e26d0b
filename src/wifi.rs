//! Network facts `herald check` reports: whether WiFi power saving is on.
//!
//! With power saving on, a Raspberry Pi's WiFi chip sleeps between beacons and delivers
//! queued packets in bursts: the audio stream arrives with stalls of 100 ms to over a
//! second, which herald must absorb with `audio.jitter_reserve_ms` (a later start). Turning
//! it off (docs/INSTALL.md) removes those stalls.
//!
//! Detection: wireless interfaces are the entries of `/sys/class/net` that have a
//! `wireless` subdirectory (no tool needed); for each, `iw dev IFACE get power_save` prints
//! `Power save: on` or `Power save: off` (works without root). Both inputs are injectable
//! so the logic is tested without WiFi hardware.

use std::io;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the kernel lists network interfaces.
pub const SYS_CLASS_NET: &str = "/sys/class/net";

/// A wireless interface with power saving switched on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WifiPowerSave {
    /// The interface, e.g. `wlan0`.
    pub interface: String,
}

impl WifiPowerSave {
    /// The warning `herald check` prints, with the commands that fix it.
    pub fn warning(&self) -> String {
        let i = &self.interface;
        format!(
            "WiFi power saving is on for {i}: the stream arrives in bursts with stalls up to \
             ~1 s, so herald starts later to ride them out. Turn it off now with \
             `sudo iw dev {i} set power_save off`, and for good with NetworkManager: \
             `sudo nmcli connection modify <connection> 802-11-wireless.powersave 2` \
             (see /usr/share/doc/herald/INSTALL.md)"
        )
    }
}

/// Why power saving could not be checked.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// Listing the interfaces failed.
    #[error("cannot list network interfaces in {path}: {source}")]
    ListInterfaces {
        /// The directory read.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// `iw` is not installed, so the state of a wireless interface is unknown.
    #[error("cannot check WiFi power saving on {interface}: `iw` is not installed (sudo apt install iw)")]
    IwMissing {
        /// The wireless interface that could not be checked.
        interface: String,
    },
    /// `iw` ran but failed.
    #[error("`iw dev {interface} get power_save` failed ({status}): {stderr}")]
    IwFailed {
        /// The interface asked about.
        interface: String,
        /// Exit status as text.
        status: String,
        /// What iw printed on stderr (trimmed).
        stderr: String,
    },
    /// `iw` printed something other than `Power save: on|off`.
    #[error("unexpected output from `iw dev {interface} get power_save` (expected `Power save: on` or `off`): {output:?}")]
    Unparsable {
        /// The interface asked about.
        interface: String,
        /// The output, trimmed.
        output: String,
    },
}

/// The first wireless interface on this machine with power saving on; `Ok(None)` when
/// there is no wireless interface or all have it off.
pub fn wifi_power_save() -> Result<Option<WifiPowerSave>, NetError> {
    wifi_power_save_with(Path::new(SYS_CLASS_NET), run_iw)
}

/// [`wifi_power_save`] with the interface directory and the `iw` query injected:
/// `iw(interface)` returns the standard output of `iw dev INTERFACE get power_save`.
pub fn wifi_power_save_with(
    sys_class_net: &Path,
    mut iw: impl FnMut(&str) -> Result<String, NetError>,
) -> Result<Option<WifiPowerSave>, NetError> {
    for interface in wireless_interfaces(sys_class_net)? {
        let output = iw(&interface)?;
        if parse_power_save(&interface, &output)? {
            return Ok(Some(WifiPowerSave { interface }));
        }
    }
    Ok(None)
}

/// Wireless interfaces (those with a `wireless` subdirectory) in `sys_class_net`, sorted.
pub fn wireless_interfaces(sys_class_net: &Path) -> Result<Vec<String>, NetError> {
    let list_err = |source| NetError::ListInterfaces {
        path: sys_class_net.to_path_buf(),
        source,
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir(sys_class_net).map_err(list_err)? {
        let entry = entry.map_err(list_err)?;
        // Entries are symlinks into /sys/devices; is_dir() follows them.
        if entry.path().join("wireless").is_dir() {
            found.push(entry.file_name().to_string_lossy().into_owned());
        }
    }
    found.sort();
    Ok(found)
}

/// Reads `iw dev IFACE get power_save` output: `Ok(true)` for `Power save: on`.
pub fn parse_power_save(interface: &str, output: &str) -> Result<bool, NetError> {
    let value = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("Power save:"))
        .map(str::trim);
    match value {
        Some("on") => Ok(true),
        Some("off") => Ok(false),
        _ => Err(NetError::Unparsable {
            interface: interface.to_string(),
            output: output.trim().to_string(),
        }),
    }
}

fn run_iw(interface: &str) -> Result<String, NetError> {
    let out = match Command::new("iw")
        .args(["dev", interface, "get", "power_save"])
        .output()
    {
        Ok(out) => out,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(NetError::IwMissing {
                interface: interface.to_string(),
            })
        }
        Err(e) => {
            return Err(NetError::IwFailed {
                interface: interface.to_string(),
                status: "could not run".to_string(),
                stderr: e.to_string(),
            })
        }
    };
    if !out.status.success() {
        return Err(NetError::IwFailed {
            interface: interface.to_string(),
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    /// A fake /sys/class/net: `wlan0` and `wlan1` are wireless, `eth0` and `lo` are not.
    fn fake_sys() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        for iface in ["eth0", "lo"] {
            fs::create_dir_all(dir.path().join(iface)).unwrap();
        }
        for iface in ["wlan1", "wlan0"] {
            fs::create_dir_all(dir.path().join(iface).join("wireless")).unwrap();
        }
        dir
    }

    #[test]
    fn only_interfaces_with_a_wireless_dir_are_wifi() {
        let sys = fake_sys();
        assert_eq!(wireless_interfaces(sys.path()).unwrap(), ["wlan0", "wlan1"]);
    }

    #[test]
    fn power_save_on_is_reported_with_its_interface_and_fix() {
        let sys = fake_sys();
        let found = wifi_power_save_with(sys.path(), |i| {
            Ok(if i == "wlan1" {
                "Power save: on\n"
            } else {
                "Power save: off\n"
            }
            .to_string())
        })
        .unwrap()
        .unwrap();
        assert_eq!(found.interface, "wlan1");
        assert!(found
            .warning()
            .contains("sudo iw dev wlan1 set power_save off"));
    }

    #[test]
    fn all_off_or_no_wifi_gives_no_warning() {
        let sys = fake_sys();
        let off = wifi_power_save_with(sys.path(), |_| Ok("Power save: off".to_string()));
        assert_eq!(off.unwrap(), None);

        let wired = tempfile::tempdir().unwrap();
        fs::create_dir_all(wired.path().join("eth0")).unwrap();
        let none = wifi_power_save_with(wired.path(), |_| panic!("iw asked about a wired NIC"));
        assert_eq!(none.unwrap(), None);
    }

    #[test]
    fn unknown_iw_output_is_an_error_naming_the_interface() {
        let err =
            parse_power_save("wlan0", "command failed: Operation not supported (-95)").unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("wlan0") && msg.contains("Operation not supported"),
            "{msg}"
        );
    }

    #[test]
    fn iw_missing_is_reported_not_taken_for_off() {
        let sys = fake_sys();
        let err = wifi_power_save_with(sys.path(), |i| {
            Err(NetError::IwMissing {
                interface: i.to_string(),
            })
        })
        .unwrap_err();
        assert!(err.to_string().contains("apt install iw"), "{err}");
    }

    #[test]
    fn a_missing_sys_dir_is_an_error_with_the_path() {
        let err = wireless_interfaces(Path::new("/nonexistent/sys/class/net")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent/sys/class/net"),
            "{err}"
        );
    }
}
