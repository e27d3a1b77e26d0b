//! The in-process emulator standing in for OpenAI on 127.0.0.1: one per test binary, on a
//! runtime of its own, so tests that run the `herald` binary can point it at `base_url`.

use std::sync::OnceLock;

use herald_emulator::{Emulator, EmulatorConfig, EmulatorHandle};

/// The binary's emulator, started on first use, expecting the bearer key `key`.
pub fn shared(key: &str) -> &'static EmulatorHandle {
    static EMU: OnceLock<(tokio::runtime::Runtime, EmulatorHandle, String)> = OnceLock::new();
    let (_, handle, started_with) = EMU.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let cfg = EmulatorConfig {
            api_key: key.into(),
            ..Default::default()
        };
        let handle = rt.block_on(Emulator::start(cfg)).unwrap();
        (rt, handle, key.to_string())
    });
    assert_eq!(started_with, key, "one test binary, one emulator key");
    handle
}
