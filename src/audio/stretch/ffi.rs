//! The few functions of libsonic (Debian `libsonic0`, `sonic.h` of 0.2.0) that
//! [`super::Stretcher`] calls. Hand-written: no maintained binding links the system library
//! (docs/STRETCH.md), and these signatures have not changed since 0.1.

use std::os::raw::{c_float, c_int, c_short};

/// `struct sonicStreamStruct`: opaque, only ever handled through a pointer.
#[repr(C)]
pub(super) struct SonicStreamStruct {
    _private: [u8; 0],
    // Not Send/Sync/Unpin by itself: `Stretcher` decides what is sound.
    _marker: core::marker::PhantomData<(*mut u8, core::marker::PhantomPinned)>,
}

/// `sonicStream`.
pub(super) type SonicStream = *mut SonicStreamStruct;

// libsonic-dev ships no pkg-config file: plain `-lsonic`, found in the (multiarch) default
// library path of the host or the cross linker. `--as-needed` keeps it out of a binary that
// never calls these.
#[link(name = "sonic")]
extern "C" {
    /// Allocates a stream (NULL only when out of memory).
    pub(super) fn sonicCreateStream(sample_rate: c_int, num_channels: c_int) -> SonicStream;
    /// Frees the stream and its buffers.
    pub(super) fn sonicDestroyStream(stream: SonicStream);
    /// Appends `num_samples` frames and processes them; 0 if a buffer could not grow.
    /// `samples` is only read (memcpy'd), although the header says `short *`.
    pub(super) fn sonicWriteShortToStream(
        stream: SonicStream,
        samples: *mut c_short,
        num_samples: c_int,
    ) -> c_int;
    /// Moves up to `max_samples` processed frames out; returns how many.
    pub(super) fn sonicReadShortFromStream(
        stream: SonicStream,
        samples: *mut c_short,
        max_samples: c_int,
    ) -> c_int;
    /// Processes everything held (padding with silence, then trimming); 0 if a buffer
    /// could not grow.
    pub(super) fn sonicFlushStream(stream: SonicStream) -> c_int;
    /// Processed frames waiting to be read.
    pub(super) fn sonicSamplesAvailable(stream: SonicStream) -> c_int;
    /// Sets the speed (tempo): read at the next write.
    pub(super) fn sonicSetSpeed(stream: SonicStream, speed: c_float);
}
