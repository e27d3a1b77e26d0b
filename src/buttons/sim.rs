//! A simulated [`ButtonSource`] on a virtual clock: tests push edges and clock advances into a
//! channel, so the [`ButtonService`](super::ButtonService) runs its real loop on synthetic,
//! exactly timed input. It stands in for GPIO hardware, which CI does not have.

use std::collections::BTreeMap;
use std::sync::mpsc;
use std::time::Instant;

use super::{ButtonError, ButtonSource, Edge, Level, SourceEvent};

/// Input for a [`SimSource`].
#[derive(Debug, Clone, Copy)]
pub enum SimInput {
    /// A raw edge (its `at` advances the virtual clock).
    Edge(Edge),
    /// Advance the virtual clock to this time without an edge.
    Advance(Instant),
}

/// The test's end of a [`SimSource`]. Dropping it closes the source.
#[derive(Debug, Clone)]
pub struct SimHandle {
    tx: mpsc::Sender<SimInput>,
}

impl SimHandle {
    /// Pushes an edge; false if the source is gone.
    pub fn edge(&self, pin: u8, level: Level, at: Instant) -> bool {
        self.tx
            .send(SimInput::Edge(Edge { pin, level, at }))
            .is_ok()
    }
    /// Advances the virtual clock; false if the source is gone.
    pub fn advance(&self, to: Instant) -> bool {
        self.tx.send(SimInput::Advance(to)).is_ok()
    }
}

/// A button source fed by a [`SimHandle`], with a virtual clock.
#[derive(Debug)]
pub struct SimSource {
    rx: mpsc::Receiver<SimInput>,
    initial: BTreeMap<u8, Level>,
    now: Instant,
    /// An input read past the last deadline, delivered on a later call.
    held: Option<SimInput>,
}

impl SimSource {
    /// A source whose pins start at `initial` levels and whose clock starts at `start`.
    pub fn new(initial: BTreeMap<u8, Level>, start: Instant) -> (SimSource, SimHandle) {
        let (tx, rx) = mpsc::channel();
        (
            SimSource {
                rx,
                initial,
                now: start,
                held: None,
            },
            SimHandle { tx },
        )
    }
}

impl ButtonSource for SimSource {
    fn levels(&mut self) -> Result<BTreeMap<u8, Level>, ButtonError> {
        Ok(self.initial.clone())
    }

    fn next(&mut self, deadline: Option<Instant>) -> Result<SourceEvent, ButtonError> {
        let input = match self.held.take() {
            Some(i) => i,
            None => self.rx.recv().map_err(|_| ButtonError::Closed)?,
        };
        let at = match input {
            SimInput::Edge(e) => e.at,
            SimInput::Advance(t) => t,
        };
        // Virtual time: a deadline before the next input is reached first.
        if let Some(d) = deadline {
            if d < at {
                self.held = Some(input);
                self.now = self.now.max(d);
                return Ok(SourceEvent::Timeout(self.now));
            }
        }
        self.now = self.now.max(at);
        Ok(match input {
            SimInput::Edge(e) => SourceEvent::Edge(e),
            SimInput::Advance(_) => SourceEvent::Timeout(self.now),
        })
    }
}
