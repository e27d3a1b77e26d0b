//! Where a job plays: this box's device, or a configured output (`[outputs.NAME]`, a
//! Snapcast stream every room plays). Each output is a [`Device`] of its own, opened
//! through its own sink backend, so it gets the same life as the local one (open per job,
//! failure with reopen backoff, a hung stream). While a job plays on an output, that
//! output's device stands in the scheduler's `device` slot, so playing and settling the job
//! need not know where it plays; it is put back as soon as the job is settled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::device::{Device, DeviceSettings, Lease};
use super::queue::Job;
use super::Scheduler;
use crate::audio::snapcast::SnapcastOpener;
use crate::audio::SinkRequest;
use crate::config::Config;
use crate::outputs::{Fallback, OutputConfig, OutputType, LOCAL};
use crate::protocol::{DeviceStatus, Routed};

/// An output connected for a job is closed right after it, so a snapserver restart between
/// announcements never leaves a dead connection for the next one; a reconnect made by the
/// backoff timer is closed this soon after.
const IDLE_CLOSE: Duration = Duration::from_secs(1);

/// One configured output and its device.
struct Output {
    device: Device,
    fallback: Option<Fallback>,
    /// What its opener was made from (server, format, latency apply at a restart).
    config: OutputConfig,
}

/// Where the job now playing plays.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Route {
    /// This box's device.
    Local,
    /// The named output (its device is in the scheduler's slot).
    Output(String),
    /// The named output could not be reached (why); it plays on this box instead.
    Fallback { output: String, reason: String },
}

/// Every configured output, and which one the playing job borrowed.
pub(super) struct Outputs {
    outputs: BTreeMap<String, Output>,
    route: Route,
}

/// The device settings of output `name`: the stream's format, the local period and
/// playout tuning, its own lead-in, no hooks.
fn settings(name: &str, o: &OutputConfig, cfg: &Config) -> DeviceSettings {
    let local = DeviceSettings::from_config(cfg);
    // A drain waits for snapserver's buffer to play out: never mistake that for a hang.
    let drain = Duration::from_millis(u64::from(o.latency_ms)) + Duration::from_secs(1);
    DeviceSettings {
        name: name.to_string(),
        sink: SinkRequest {
            rate: o.format.rate,
            channels: o.format.channels,
            ..local.sink.clone()
        },
        lead_in: Duration::from_millis(u64::from(o.lead_in_ms)),
        idle_close: IDLE_CLOSE,
        hook_before_open: Vec::new(),
        hook_after_close: Vec::new(),
        write_timeout: local.write_timeout.max(drain),
        ..local
    }
}

impl Outputs {
    /// A closed device for every `[outputs.NAME]` in `cfg`.
    pub fn from_config(cfg: &Config) -> Self {
        let outputs = cfg
            .outputs
            .iter()
            .map(|(name, o)| {
                let opener = match o.kind {
                    OutputType::Snapcast => Arc::new(SnapcastOpener {
                        target: o.target(name),
                    }),
                };
                let device = Device::new(opener, settings(name, o, cfg));
                let output = Output {
                    device,
                    fallback: o.fallback_to,
                    config: o.clone(),
                };
                (name.clone(), output)
            })
            .collect();
        Outputs {
            outputs,
            route: Route::Local,
        }
    }

    /// When an output next needs attention (a reopen after a failure, an idle close).
    pub fn next_timer(&self) -> Option<Instant> {
        self.outputs
            .values()
            .filter_map(|o| o.device.next_timer())
            .min()
    }

    /// Does what the due timers were for.
    pub async fn on_timer(&mut self) {
        let now = Instant::now();
        for o in self.outputs.values_mut() {
            if o.device.next_timer().is_some_and(|at| at <= now) {
                o.device.on_timer().await;
            }
        }
    }

    /// Closes every output (shutdown).
    pub async fn close_all(&mut self) {
        for o in self.outputs.values_mut() {
            o.device.close().await;
        }
    }

    /// Where the job now playing plays, for its `finished` reply (`None`: this box, asked).
    pub fn routed(&self) -> Option<Box<Routed>> {
        let routed = match &self.route {
            Route::Local => return None,
            Route::Output(name) => Routed {
                output: name.clone(),
                output_fallback: None,
            },
            Route::Fallback { output, reason } => Routed {
                output: LOCAL.to_string(),
                output_fallback: Some(format!(
                    "output '{output}' unavailable, played on this box instead (fallback_to = \"local\"): {reason}"
                )),
            },
        };
        Some(Box::new(routed))
    }
}

impl Scheduler {
    /// The device `job` plays on, opened if needed: its output's (swapped into the
    /// `device` slot until [`Self::release_route`]), or this box's, or this box's after
    /// all when the output cannot be reached and falls back. The error is why not.
    pub(super) async fn acquire_for(&mut self, job: &Job) -> Result<Lease, String> {
        let name = match job.to.as_deref() {
            None | Some(LOCAL) => return self.device.acquire().await,
            Some(name) => name.to_string(),
        };
        let Some(out) = self.outputs.outputs.get_mut(&name) else {
            // Checked at admission; a reload may have removed it since.
            return Err(format!(
                "output '{name}' is no longer configured (outputs are read at start-up)"
            ));
        };
        std::mem::swap(&mut self.device, &mut out.device);
        self.outputs.route = Route::Output(name.clone());
        let reason = match self.device.acquire().await {
            Ok(lease) => return Ok(lease),
            Err(reason) => reason,
        };
        let fallback = out.fallback;
        std::mem::swap(&mut self.device, &mut out.device);
        self.outputs.route = Route::Local;
        match fallback {
            None => Err(reason),
            Some(Fallback::Local) => {
                tracing::warn!(id = %job.id, output = %name, %reason, "output unavailable; playing on this box");
                let lease = self.device.acquire().await?;
                self.outputs.route = Route::Fallback {
                    output: name,
                    reason,
                };
                Ok(lease)
            }
        }
    }

    /// This box's own device, wherever it is while a job plays on an output.
    pub(super) fn local_device(&self) -> &Device {
        match &self.outputs.route {
            Route::Output(name) => self
                .outputs
                .outputs
                .get(name)
                .map_or(&self.device, |o| &o.device),
            _ => &self.device,
        }
    }

    /// Every output's device state for `status`, wherever each device is.
    pub(super) fn output_statuses(&self) -> BTreeMap<String, DeviceStatus> {
        let current = match &self.outputs.route {
            Route::Output(name) => Some(name.as_str()),
            _ => None,
        };
        self.outputs
            .outputs
            .iter()
            .map(|(name, o)| {
                let device = if current == Some(name.as_str()) {
                    &self.device
                } else {
                    &o.device
                };
                (name.clone(), device.status())
            })
            .collect()
    }

    /// Puts this box's device back in its slot after a job on an output, and disconnects
    /// the output (unless it failed: then it reconnects with backoff).
    pub(super) async fn release_route(&mut self) {
        let route = std::mem::replace(&mut self.outputs.route, Route::Local);
        let Route::Output(name) = route else {
            return;
        };
        if let Some(out) = self.outputs.outputs.get_mut(&name) {
            std::mem::swap(&mut self.device, &mut out.device);
            if out.device.error().is_none() {
                out.device.close().await;
            }
        }
    }

    /// Applies reloaded settings to this box's device and the outputs (wherever each
    /// device is at the moment). Added or removed outputs take effect at the next start.
    pub(super) fn reconfigure_devices(&mut self, cfg: &Config) {
        let local = DeviceSettings::from_config(cfg);
        let current = match &self.outputs.route {
            Route::Output(name) => Some(name.clone()),
            _ => None,
        };
        match &current {
            Some(name) => match self.outputs.outputs.get_mut(name) {
                Some(out) => out.device.reconfigure(local),
                None => self.device.reconfigure(local),
            },
            None => self.device.reconfigure(local),
        }
        for (name, o) in &cfg.outputs {
            let Some(out) = self.outputs.outputs.get_mut(name) else {
                tracing::warn!(output = %name, "a new output takes effect at the next restart");
                continue;
            };
            out.fallback = o.fallback_to;
            let c = &out.config;
            if (&c.server, c.format, c.latency_ms) != (&o.server, o.format, o.latency_ms) {
                tracing::warn!(output = %name, "server, format and latency_ms changes take effect at the next restart");
            }
            let s = settings(name, o, cfg);
            if current.as_deref() == Some(name.as_str()) {
                self.device.reconfigure(s);
            } else {
                out.device.reconfigure(s);
            }
        }
    }
}
