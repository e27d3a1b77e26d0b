/*
 * A test-only ALSA "ioplug" PCM that swallows playback data instantly (like the null PCM) but
 * advertises a constrained hw-params space, so the real alsa-lib negotiation can be tested
 * against devices that cannot exist here: a DAC that only takes 44.1 kHz, one that only takes
 * S32, one with a fixed period size, one whose driver refuses a period size at hw_params time.
 *
 * Built by tests/support/alsa_env.rs with `cc -shared -fPIC ... -lasound` and loaded through
 * `pcm_type.herald_test.lib` in the generated configuration. Configuration fields:
 *   rate N               only this rate (default: 8000..192000)
 *   channels_min/max N   channel range (default 1..8)
 *   format "S32_LE"      the only sample format (default S16_LE)
 *   period_bytes N       the only period size in bytes (default 64..1 MiB)
 *   reject_period_bytes N  advertise it, but fail hw_params with EINVAL if it is chosen
 *   reject_period_bytes_max N  advertise them, but fail hw_params for periods of <= N bytes
 *   open_errno N         fail every open with -N (e.g. 16 = EBUSY: a device another program holds)
 *   xrun_after_frames N  report an underrun (-EPIPE) once N frames were played since prepare
 *   fifo "PATH"          a real-time "DAC" whose buffer is the FIFO's pipe: frames go straight
 *                        into the FIFO (a write blocks while the pipe is full, so the reader's
 *                        clock paces the writer), the hardware pointer is what the reader has
 *                        taken, and so snd_pcm_delay reports the frames still in the pipe, as a
 *                        sound card reports what is in its buffer. (The `file` PCM over `null`
 *                        writes the same FIFO but reports no delay and holds up to a buffer back.)
 */
#include <errno.h>
#include <fcntl.h>
#include <sys/ioctl.h>
#include <time.h>
#include <poll.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <alsa/asoundlib.h>
#include <alsa/pcm_external.h>

typedef struct {
	snd_pcm_ioplug_t io;
	snd_pcm_uframes_t hw_ptr;
	long reject_period_bytes;
	long reject_period_bytes_max;
	long xrun_after_frames;
	int xrun_fired;
	int fifo_fd;		/* -1 unless `fifo` is set; then also the poll fd */
	unsigned int frame_bytes;
	snd_pcm_uframes_t written;	/* frames put into the FIFO since prepare */
} herald_test_t;

/* Bytes waiting in the FIFO's pipe (FIONREAD works on either end of a Linux pipe). */
static int ht_fifo_fill(herald_test_t *t)
{
	int n = 0;
	if (ioctl(t->fifo_fd, FIONREAD, &n) < 0)
		return -errno;
	return n;
}

static int ht_close(snd_pcm_ioplug_t *io)
{
	herald_test_t *t = io->private_data;
	close(io->poll_fd);
	free(t);
	return 0;
}

static int ht_start(snd_pcm_ioplug_t *io) { (void)io; return 0; }
static int ht_stop(snd_pcm_ioplug_t *io) { (void)io; return 0; }

static int ht_prepare(snd_pcm_ioplug_t *io)
{
	herald_test_t *t = io->private_data;
	t->hw_ptr = 0;
	t->xrun_fired = 0;
	t->written = 0;
	return 0;
}

/* Everything written is consumed at once: the hardware pointer follows the application.
 * With a FIFO, the pointer is what the reader has taken: written less what is in the pipe. */
static snd_pcm_sframes_t ht_pointer(snd_pcm_ioplug_t *io)
{
	herald_test_t *t = io->private_data;
	if (t->fifo_fd >= 0) {
		int fill = ht_fifo_fill(t);
		snd_pcm_uframes_t queued;
		if (fill < 0)
			return fill;
		queued = t->frame_bytes ? (snd_pcm_uframes_t)fill / t->frame_bytes : 0;
		/* Bytes a previous writer left in the pipe are not ours. */
		if (queued > t->written)
			queued = t->written;
		return (t->written - queued) % io->buffer_size;
	}
	if (t->xrun_after_frames > 0 && !t->xrun_fired &&
	    t->hw_ptr >= (snd_pcm_uframes_t)t->xrun_after_frames) {
		t->xrun_fired = 1;
		return -EPIPE;
	}
	return t->hw_ptr % io->buffer_size;
}

static snd_pcm_sframes_t ht_transfer(snd_pcm_ioplug_t *io, const snd_pcm_channel_area_t *areas,
				     snd_pcm_uframes_t offset, snd_pcm_uframes_t size)
{
	herald_test_t *t = io->private_data;
	if (t->fifo_fd >= 0) {
		/* Interleaved: the frames are contiguous from the first channel's address. */
		const char *p = (const char *)areas[0].addr + (areas[0].first + offset * areas[0].step) / 8;
		size_t left = size * t->frame_bytes;
		while (left > 0) {
			ssize_t n = write(t->fifo_fd, p, left);
			if (n < 0 && errno == EINTR)
				continue;
			if (n < 0)
				return -EIO; /* the reader went away */
			p += n;
			left -= (size_t)n;
		}
		t->written += size;
		return size;
	}
	t->hw_ptr += size;
	return size;
}

/* Draining waits, as a sound card does, until the pipe has been read empty (at most 2 s). */
static int ht_drain(snd_pcm_ioplug_t *io)
{
	herald_test_t *t = io->private_data;
	struct timespec tick = { 0, 2000000 };
	int i;
	if (t->fifo_fd < 0)
		return 0;
	for (i = 0; i < 1000 && ht_fifo_fill(t) > 0; i++)
		nanosleep(&tick, NULL);
	return 0;
}

static int ht_hw_params(snd_pcm_ioplug_t *io, snd_pcm_hw_params_t *params)
{
	herald_test_t *t = io->private_data;
	snd_pcm_uframes_t period;
	snd_pcm_format_t format;
	unsigned int channels;
	int dir = 0;
	long bytes;
	if (snd_pcm_hw_params_get_period_size(params, &period, &dir) < 0 ||
	    snd_pcm_hw_params_get_format(params, &format) < 0 ||
	    snd_pcm_hw_params_get_channels(params, &channels) < 0)
		return -EINVAL;
	t->frame_bytes = channels * (unsigned int)snd_pcm_format_physical_width(format) / 8;
	bytes = (long)period * t->frame_bytes;
	if (t->reject_period_bytes > 0 && bytes == t->reject_period_bytes)
		return -EINVAL;
	if (bytes <= t->reject_period_bytes_max)
		return -EINVAL;
	return 0;
}

static const snd_pcm_ioplug_callback_t ht_callback = {
	.start = ht_start,
	.stop = ht_stop,
	.pointer = ht_pointer,
	.transfer = ht_transfer,
	.close = ht_close,
	.prepare = ht_prepare,
	.hw_params = ht_hw_params,
	.drain = ht_drain,
};

SND_PCM_PLUGIN_DEFINE_FUNC(herald_test)
{
	snd_config_iterator_t i, next;
	long rate = 0, cmin = 1, cmax = 8, period_bytes = 0, reject = 0, reject_max = 0, xrun = 0, open_errno = 0;
	const char *fmt = "S16_LE";
	const char *fifo = NULL;
	snd_pcm_format_t format;
	herald_test_t *t;
	int err;
	(void)root;

	snd_config_for_each(i, next, conf) {
		snd_config_t *n = snd_config_iterator_entry(i);
		const char *id;
		long *dst = NULL;
		if (snd_config_get_id(n, &id) < 0)
			continue;
		if (!strcmp(id, "comment") || !strcmp(id, "type") || !strcmp(id, "hint"))
			continue;
		if (!strcmp(id, "format")) {
			if (snd_config_get_string(n, &fmt) < 0) {
				SNDERR("format must be a string");
				return -EINVAL;
			}
			continue;
		}
		if (!strcmp(id, "fifo")) {
			if (snd_config_get_string(n, &fifo) < 0) {
				SNDERR("fifo must be a string");
				return -EINVAL;
			}
			continue;
		}
		if (!strcmp(id, "rate")) dst = &rate;
		else if (!strcmp(id, "channels_min")) dst = &cmin;
		else if (!strcmp(id, "channels_max")) dst = &cmax;
		else if (!strcmp(id, "period_bytes")) dst = &period_bytes;
		else if (!strcmp(id, "reject_period_bytes")) dst = &reject;
		else if (!strcmp(id, "reject_period_bytes_max")) dst = &reject_max;
		else if (!strcmp(id, "xrun_after_frames")) dst = &xrun;
		else if (!strcmp(id, "open_errno")) dst = &open_errno;
		if (!dst || snd_config_get_integer(n, dst) < 0) {
			SNDERR("Unknown or non-integer field %s", id);
			return -EINVAL;
		}
	}
	if (stream != SND_PCM_STREAM_PLAYBACK)
		return -EINVAL;
	if (open_errno > 0)
		return -(int)open_errno;
	format = snd_pcm_format_value(fmt);
	if (format == SND_PCM_FORMAT_UNKNOWN) {
		SNDERR("unknown format %s", fmt);
		return -EINVAL;
	}

	t = calloc(1, sizeof(*t));
	if (!t)
		return -ENOMEM;
	t->reject_period_bytes = reject;
	t->reject_period_bytes_max = reject_max;
	t->xrun_after_frames = xrun;
	t->fifo_fd = -1;
	if (fifo) {
		/* Non-blocking open fails (ENXIO) instead of hanging when no reader is there. */
		int fl;
		t->fifo_fd = open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
		if (t->fifo_fd < 0 || (fl = fcntl(t->fifo_fd, F_GETFL)) < 0 ||
		    fcntl(t->fifo_fd, F_SETFL, fl & ~O_NONBLOCK) < 0) {
			err = -errno;
			SNDERR("cannot open the FIFO %s for writing", fifo);
			if (t->fifo_fd >= 0)
				close(t->fifo_fd);
			free(t);
			return err;
		}
	}
	t->io.version = SND_PCM_IOPLUG_VERSION;
	t->io.name = "herald test PCM";
	t->io.mmap_rw = 0;
	t->io.callback = &ht_callback;
	t->io.private_data = t;
	/* /dev/null is always writable, so waiting for room never blocks (room is always there).
	 * A FIFO is writable once the reader has freed a page of its pipe. */
	t->io.poll_fd = t->fifo_fd >= 0 ? t->fifo_fd : open("/dev/null", O_WRONLY | O_CLOEXEC);
	t->io.poll_events = POLLOUT;
	if (t->io.poll_fd < 0) {
		err = -errno;
		free(t);
		return err;
	}
	err = snd_pcm_ioplug_create(&t->io, name, stream, mode);
	if (err < 0) {
		close(t->io.poll_fd);
		free(t);
		return err;
	}

	{
		unsigned int access[] = { SND_PCM_ACCESS_RW_INTERLEAVED, SND_PCM_ACCESS_MMAP_INTERLEAVED };
		unsigned int formats[] = { (unsigned int)format };
		unsigned int rates[] = { (unsigned int)rate };
		unsigned int pbytes[] = { (unsigned int)period_bytes };
		if ((err = snd_pcm_ioplug_set_param_list(&t->io, SND_PCM_IOPLUG_HW_ACCESS, 2, access)) < 0 ||
		    (err = snd_pcm_ioplug_set_param_list(&t->io, SND_PCM_IOPLUG_HW_FORMAT, 1, formats)) < 0 ||
		    (err = snd_pcm_ioplug_set_param_minmax(&t->io, SND_PCM_IOPLUG_HW_CHANNELS, cmin, cmax)) < 0 ||
		    (err = rate > 0
			   ? snd_pcm_ioplug_set_param_list(&t->io, SND_PCM_IOPLUG_HW_RATE, 1, rates)
			   : snd_pcm_ioplug_set_param_minmax(&t->io, SND_PCM_IOPLUG_HW_RATE, 8000, 192000)) < 0 ||
		    (err = period_bytes > 0
			   ? snd_pcm_ioplug_set_param_list(&t->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 1, pbytes)
			   : snd_pcm_ioplug_set_param_minmax(&t->io, SND_PCM_IOPLUG_HW_PERIOD_BYTES, 64, 1 << 20)) < 0 ||
		    (err = snd_pcm_ioplug_set_param_minmax(&t->io, SND_PCM_IOPLUG_HW_PERIODS, 2, 64)) < 0 ||
		    (err = snd_pcm_ioplug_set_param_minmax(&t->io, SND_PCM_IOPLUG_HW_BUFFER_BYTES, 128, 1 << 24)) < 0) {
			snd_pcm_ioplug_delete(&t->io);
			return err;
		}
	}
	*pcmp = t->io.pcm;
	return 0;
}

SND_PCM_PLUGIN_SYMBOL(herald_test);
