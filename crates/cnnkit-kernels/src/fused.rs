//! Inference: MobileNetV2's inverted residual block — 1×1 expand, 3×3 depthwise, 1×1 project,
//! optional residual add — run as one kernel over strips of output rows.
//!
//! Run layer by layer, the block writes its expanded activation (6× the input's channels) to
//! memory and reads it back twice: at 112×112 that is 4.8 MB per pass, and the layers of the
//! first blocks ran at 35–100 GFLOP/s on two threads against 150–175 for the same GEMMs on
//! 14×14 planes. Here each thread walks a range of output rows in strips sized to stay in L2:
//! it expands only the input rows the strip's depthwise taps need (rows shared with the
//! previous strip are kept in a rolling window, not recomputed), runs the depthwise layer on
//! that window, and projects the strip straight into the output, adding bias, residual and
//! activations on the way. Only the block's input and output touch memory.
//!
//! A block without expansion may instead take its input from a network's stem, a stride-2
//! convolution of the image ([`Stem`]: MobileNetV2's 3→32 3×3 before its first block). The
//! stem's output rows are then made in the window like expanded rows (gathered taps and the
//! pointwise kernel, as `crate::direct` does), and its 32×112×112 output never reaches memory.
//!
//! Blocks whose output plane has at most [`SPLIT_MAX_PIXELS`] (14×14) split by expanded
//! channels instead, on the 1×1 weights packed by the caller ([`PackedWeights`]; see the
//! notes at [`SPLIT_MAX_PIXELS`]).
//!
//! f32 with AVX-512 (the depthwise strip kernel); [`InvertedResidual::applies`] says when.

use crate::conv::{Epilogue, SyncPtr};
use crate::packed::{PackedA, MR};
use crate::Float;
use rayon::prelude::*;

/// A 1×1 convolution's parameters. w: (C_out, C_in); b: (C_out).
#[derive(Clone, Copy, Debug)]
pub struct Pointwise<'a> {
    pub w: &'a [f32],
    pub b: Option<&'a [f32]>,
    pub ep: Epilogue,
}

/// A block's two 1×1 weight matrices packed for [`crate::packed`] (`PackedA::new` of the
/// expansion's (C_mid, C_in) and the projection's (C_out, C_mid)), kept by the caller across
/// runs: the split by expanded channels runs on them (see [`forward`]).
#[derive(Clone, Copy, Debug)]
pub struct PackedWeights<'a> {
    pub expand: &'a PackedA,
    pub project: &'a PackedA,
}

/// A stride-2 convolution (one group, no dilation) whose output is the block's input: the
/// block reads the image and makes the stem's rows itself. w: (C_in of the block, C_img, KH,
/// KW); b: (C_in of the block).
#[derive(Clone, Copy, Debug)]
pub struct Stem<'a> {
    pub c_img: usize,
    pub h: usize,
    pub w: usize,
    pub kh: usize,
    pub kw: usize,
    /// Zero padding (rows, columns), on both sides.
    pub padding: (usize, usize),
    pub conv: Pointwise<'a>,
}

impl Stem<'_> {
    /// The stem as a convolution producing `c_out` channels, for one image.
    fn geom(&self, c_out: usize) -> crate::conv::ConvGeom {
        crate::conv::ConvGeom {
            n: 1,
            c_in: self.c_img,
            h: self.h,
            w: self.w,
            c_out,
            kh: self.kh,
            kw: self.kw,
            stride: (2, 2),
            padding: self.padding,
            dilation: (1, 1),
            groups: 1,
        }
    }
}

/// The block: y = after(ep_p(project(dw(expand(x)))) + residual), each layer with its bias and
/// activation. x: (N, C_in, H, W), or with a stem the image (N, C_img, H_img, W_img) whose
/// stem output is (N, C_in, H, W); y and the residual: (N, C_out, OH, OW).
#[derive(Clone, Copy, Debug)]
pub struct InvertedResidual<'a> {
    pub c_in: usize,
    pub c_mid: usize,
    pub c_out: usize,
    pub h: usize,
    pub w: usize,
    /// (C_mid, C_in); None when the block has no expansion (C_mid = C_in).
    pub expand: Option<Pointwise<'a>>,
    /// The convolution that makes the block's input from x (only without expansion).
    pub stem: Option<Stem<'a>>,
    /// The depthwise 3×3 pad-1 filters, (C_mid, 1, 3, 3), with bias (C_mid) and activation.
    pub dw_w: &'a [f32],
    pub dw_b: Option<&'a [f32]>,
    pub dw_ep: Epilogue,
    /// 1 or 2.
    pub stride: usize,
    /// (C_out, C_mid).
    pub project: Pointwise<'a>,
    /// The activation after the residual add (None without a residual).
    pub after: Epilogue,
    /// The 1×1 weights packed: needed for (and only used by) the split by channels.
    pub packed: Option<PackedWeights<'a>>,
}

/// Most output pixels per image of a block split by expanded channels (below), and fewest of
/// one split by output rows, which also takes at most [`MAX_MID_CHANNELS`] expanded channels.
/// By rows, measured on two threads against the layers run one by one
/// (`examples/fused_block.rs`), MobileNetV2's blocks gained down to 14×14 (64→384→64: 0.138 →
/// 0.117 ms; 96→576→96 a tie) but lost at 7×7 with 960 channels: a strip of a few 7-pixel rows
/// is a narrow product with a long K. (Strips of equal height with a 640 KiB budget made the
/// whole network 2–3% slower.)
pub const SPLIT_MAX_PIXELS: usize = 14 * 14;
pub const MAX_MID_CHANNELS: usize = 576;

// An output plane of at most SPLIT_MAX_PIXELS (MobileNetV2's blocks on 14×14 and 7×7 planes)
// is split by expanded channels instead of rows: each part expands its channels over the whole
// plane into L2, runs their depthwise filters, and projects them into a partial output (the
// projection's sum over its channel range); the partials are summed, with bias, activations
// and residual, once all parts are done. No row is expanded twice (split by rows on two
// threads, a 14×14 block expands 16 rows for its 14) and the expanded activations never reach
// memory. Both 1×1 products run on `crate::packed` (vectorised along channels, weights packed
// once by the caller; a 14-pixel row is one of its 14-column panels): the pointwise kernel
// vectorises along pixels and fills 64 lanes with a 7×7 plane's 49 (960→320 ran 0.37 → 0.43 ms
// fused on it, so the 7×7 blocks had stayed layer by layer). In the network (MobileNetV2 at
// batch 1, two threads, per block, medians of sittings with ONNX Runtime interleaved):
// 64→384→64 at 14×14 0.14–0.17 → 0.13–0.15 ms by rows → by channels, 96→576→96 0.30–0.35 →
// 0.27–0.30; layer by layer → by channels 160→960→160 0.25–0.34 → 0.20–0.23, 160→960→320
// 0.33–0.40 → 0.28–0.32. At 28×28 the split lost (32→192→32 0.15–0.17 → 0.22–0.26: three
// parts of 64 channels for two threads, and 0.6 MB of window per part). Timed hot in a loop
// (`examples/fused_block.rs`) the split and the layers tie: what the split saves is the Add
// node, the rows expanded twice, and the expanded activations and weights each layer would
// fetch again from L3.

/// Floats of L2 a strip's window and depthwise output may take (512 KiB of Zen 4's 1 MiB).
const STRIP_FLOATS: usize = 128 << 10;

/// True when the CPU runs the fused kernel (AVX-512F).
pub fn available() -> bool {
    crate::packed::available()
}

impl InvertedResidual<'_> {
    /// The output plane (OH, OW).
    pub fn out_hw(&self) -> (usize, usize) {
        ((self.h - 1) / self.stride + 1, (self.w - 1) / self.stride + 1)
    }

    /// True when [`forward`] runs this block: stride 1 or 2, an output plane of at least
    /// [`SPLIT_MAX_PIXELS`] with at most [`MAX_MID_CHANNELS`] expanded channels (split by
    /// rows), or one of at most that many with an expansion and the packed weights, without a
    /// stem (split by channels), operands of the stated sizes, on a CPU with AVX-512.
    pub fn applies(&self) -> bool {
        let (oh, ow) = if self.h > 0 && self.w > 0 && self.stride > 0 { self.out_hw() } else { (0, 0) };
        let sized = |p: &Pointwise, m: usize, k: usize| p.w.len() == m * k && p.b.is_none_or(|b| b.len() == m);
        let expand_ok = match &self.expand {
            Some(e) => sized(e, self.c_mid, self.c_in) && self.stem.is_none(),
            None => self.c_mid == self.c_in,
        };
        let stem_ok = self.stem.as_ref().is_none_or(|st| {
            let g = st.geom(self.c_in);
            crate::direct::applies(&g) && g.out_hw() == Some((self.h, self.w)) && sized(&st.conv, self.c_in, g.col_rows())
        });
        let packed_ok = self.expand.is_some()
            && self
                .packed
                .is_some_and(|p| (p.expand.m, p.expand.k, p.project.m, p.project.k) == (self.c_mid, self.c_in, self.c_out, self.c_mid));
        (self.stride == 1 || self.stride == 2)
            && (if self.by_channels() { packed_ok } else { oh * ow >= SPLIT_MAX_PIXELS && self.c_mid <= MAX_MID_CHANNELS })
            && self.c_in > 0
            && self.c_mid > 0
            && self.c_out > 0
            && expand_ok
            && stem_ok
            && self.dw_w.len() == self.c_mid * 9
            && self.dw_b.is_none_or(|b| b.len() == self.c_mid)
            && sized(&self.project, self.c_out, self.c_mid)
            && available()
    }

    /// True when [`forward`] splits the block by expanded channels (an output plane of at most
    /// [`SPLIT_MAX_PIXELS`], no stem) rather than by output rows: it then needs
    /// [`InvertedResidual::packed`].
    pub fn by_channels(&self) -> bool {
        let (oh, ow) = if self.h > 0 && self.w > 0 && self.stride > 0 { self.out_hw() } else { (0, 0) };
        oh * ow <= SPLIT_MAX_PIXELS && self.stem.is_none()
    }

    /// Expanded channels per part when split by channels on `t` threads: whole panels of
    /// [`MR`] (the packed expansion's), at least one part per thread, and few enough channels
    /// that a part's expanded plane and depthwise output fit [`STRIP_FLOATS`]. (Two parts per
    /// thread, for balance, ran MobileNetV2's 7×7 blocks ~8% slower: more partials to add.)
    fn channels_per_part(&self, t: usize) -> usize {
        let (oh, ow) = self.out_hw();
        let per_channel = self.h * self.w + oh * ow;
        let parts = (self.c_mid * per_channel).div_ceil(STRIP_FLOATS).max(t).clamp(1, self.c_mid);
        self.c_mid.div_ceil(parts).next_multiple_of(MR)
    }

    /// Output rows per strip: the rolling window ((R − 1)·S + 3 expanded rows), the strip's
    /// depthwise output (R rows) and a stem's taps (K per window row) within [`STRIP_FLOATS`].
    fn strip_rows(&self) -> usize {
        let (_, ow) = self.out_hw();
        let k = self.stem_k();
        let per_row = (self.c_mid + k) * self.stride * self.w + self.c_mid * ow;
        let fixed = (self.c_mid + k) * 3 * self.w;
        (STRIP_FLOATS.saturating_sub(fixed) / per_row.max(1)).max(1)
    }

    /// K = C_img·KH·KW of the stem's taps, 0 without one.
    fn stem_k(&self) -> usize {
        self.stem.as_ref().map_or(0, |st| st.c_img * st.kh * st.kw)
    }

    /// Elements of one image of x: the block's input, or with a stem the image.
    fn x_image_len(&self) -> usize {
        self.stem.as_ref().map_or(self.c_in * self.h * self.w, |st| st.c_img * st.h * st.w)
    }
}

/// Runs the block on `n` images. x: (N, C_in, H, W), or with a stem the image; residual:
/// (N, C_out, OH, OW) when the block adds one; y: (N, C_out, OH, OW) (overwritten). Each image's output rows split into
/// one contiguous range per thread (fewer ranges per image when the batch is larger), so a
/// range's strips share their window and only range boundaries expand rows twice; a thread
/// that finishes its range early takes rows from the back of another's; planes of
/// at most [`SPLIT_MAX_PIXELS`] split by expanded channels instead ([`forward_by_channels`]).
/// Panics unless [`InvertedResidual::applies`] and the slices have those sizes.
pub fn forward(blk: &InvertedResidual, n: usize, x: &[f32], residual: Option<&[f32]>, y: &mut [f32]) {
    assert!(blk.applies(), "fused inverted residual: unsupported block");
    let (oh, ow) = blk.out_hw();
    let (x_img, y_img) = (blk.x_image_len(), blk.c_out * oh * ow);
    assert!(x.len() >= n * x_img && y.len() >= n * y_img && residual.is_none_or(|r| r.len() >= n * y_img));
    if blk.by_channels() {
        return forward_by_channels(blk, n, x, residual, y);
    }
    let t = crate::num_threads();
    let ranges = t.div_ceil(n.max(1)).min(oh).max(1);
    let per = oh.div_ceil(ranges);
    let units = n * ranges;
    // Each unit's rows not yet claimed: its owner claims strips from the front, and a thread
    // done with its own unit takes the back half of another's (see `Rows`).
    let claims: Vec<Rows> = (0..units).map(|u| Rows::new((u % ranges) * per, ((u % ranges + 1) * per).min(oh))).collect();
    let yp = SyncPtr(y.as_mut_ptr());
    let image = |u: usize| {
        let i = u / ranges;
        (&x[i * x_img..][..x_img], residual.map(|r| &r[i * y_img..][..y_img]), i * y_img)
    };
    let run = |u: usize| {
        let (xi, res, yo) = image(u);
        // SAFETY: image u / ranges's output rows claimed from this unit (in every channel)
        // are written by the claimant only; y holds n images (asserted above).
        unsafe { rows(blk, xi, res, yp.get().add(yo), claims[u].whole(), Some(&claims[u])) };
        if t == 1 {
            return;
        }
        // Rows a slower thread has not reached: the back half of another unit's unclaimed
        // rows, while that is worth a window of its own (its first strip's halo rows are
        // expanded again). On a shared VM one vCPU often runs slower than the other: with
        // fixed halves the faster thread waited 3–6% of MobileNetV2's 112×112 and 56×56 blocks.
        while let Some((v, stolen)) = (0..units).find_map(|v| claims[v].steal(STEAL_MIN_ROWS).map(|r| (v, r))) {
            let (xv, rv, yo) = image(v);
            // SAFETY: as above; the stolen rows are this thread's alone.
            unsafe { rows(blk, xv, rv, yp.get().add(yo), stolen, None) };
        }
    };
    if t > 1 && units > 1 {
        (0..units).into_par_iter().for_each(run);
    } else {
        (0..units).for_each(run);
    }
}

/// Fewest unclaimed rows a thread takes from another's unit (half of them, from the back).
const STEAL_MIN_ROWS: usize = 4;

/// The output rows of one unit of [`forward`] not yet claimed, `next .. end`, packed into one
/// atomic word so that the owner (advancing `next` strip by strip) and a thief (lowering
/// `end`) never claim the same row.
struct Rows {
    range: std::sync::atomic::AtomicU64,
    whole: std::ops::Range<usize>,
}

impl Rows {
    fn new(start: usize, end: usize) -> Rows {
        Rows { range: std::sync::atomic::AtomicU64::new(Self::pack(start, end)), whole: start..end }
    }
    fn pack(next: usize, end: usize) -> u64 {
        ((next as u64) << 32) | end as u64
    }
    /// The unit's rows as first assigned.
    fn whole(&self) -> std::ops::Range<usize> {
        self.whole.clone()
    }
    /// Claims up to `r` rows from the front.
    fn claim(&self, r: usize) -> Option<std::ops::Range<usize>> {
        self.update(|next, end| (next < end).then(|| (next..(next + r).min(end), Self::pack((next + r).min(end), end))))
    }
    /// Claims the back half of the unclaimed rows when at least `min` are left.
    fn steal(&self, min: usize) -> Option<std::ops::Range<usize>> {
        self.update(|next, end| {
            let cut = end - (end - next).div_ceil(2);
            (end >= next + min).then(|| (cut..end, Self::pack(next, cut)))
        })
    }
    fn update(&self, f: impl Fn(usize, usize) -> Option<(std::ops::Range<usize>, u64)>) -> Option<std::ops::Range<usize>> {
        use std::sync::atomic::Ordering::{AcqRel, Acquire};
        let mut cur = self.range.load(Acquire);
        loop {
            let (rows, new) = f((cur >> 32) as usize, (cur & 0xffff_ffff) as usize)?;
            match self.range.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => return Some(rows),
                Err(now) => cur = now,
            }
        }
    }
}

/// [`forward`] split by expanded channels (see [`InvertedResidual::by_channels`]): part p of
/// image i projects its channel range into y (p = 0) or into a partial output; then each
/// output row adds its partials, the projection's bias and activation and the residual.
fn forward_by_channels(blk: &InvertedResidual, n: usize, x: &[f32], residual: Option<&[f32]>, y: &mut [f32]) {
    let (oh, ow) = blk.out_hw();
    let oplane = oh * ow;
    let (x_img, y_img) = (blk.x_image_len(), blk.c_out * oplane);
    // The units write y through a raw pointer: its length is checked here too (tests call
    // this mode directly).
    assert!(x.len() >= n * x_img && y.len() >= n * y_img && residual.is_none_or(|r| r.len() >= n * y_img));
    let (Some(pk), Some(e)) = (blk.packed, blk.expand) else { panic!("fused inverted residual: a channel split needs the packed weights") };
    let t = crate::num_threads();
    let per = blk.channels_per_part(t);
    let parts = blk.c_mid.div_ceil(per);
    // The partials live in the calling thread's second scratch buffer: the units use the
    // first (their window) and the packed GEMM's own (its Cᵀ tiles).
    f32::with_aux_scratch(n * (parts - 1) * y_img, |partials| {
        let (yp, pp) = (SyncPtr(y.as_mut_ptr()), SyncPtr(partials.as_mut_ptr()));
        let run = |u: usize| {
            let (i, p) = (u / parts, u % parts);
            let channels = p * per..((p + 1) * per).min(blk.c_mid);
            // SAFETY: each unit writes its own (C_out, OH, OW) output: image i of y for part 0,
            // else its own slot of partials (both hold n such outputs); the CPU has AVX-512F
            // (`applies`, asserted by the caller).
            unsafe {
                let out = if p == 0 { yp.get().add(i * y_img) } else { pp.get().add((i * (parts - 1) + p - 1) * y_img) };
                channel_range(blk, &pk, &e, &x[i * x_img..][..x_img], channels, out);
            }
        };
        let units = n * parts;
        if t > 1 && units > 1 {
            (0..units).into_par_iter().for_each(run);
        } else {
            (0..units).for_each(run);
        }
        let p = &blk.project;
        let partials = &*partials;
        // Output rows in one contiguous range per thread.
        let rows_per = (n * blk.c_out).div_ceil(t);
        let finish = |(ci, ys): (usize, &mut [f32])| {
            for (r, yr) in ys.chunks_mut(oplane).enumerate() {
                let row = ci * rows_per + r;
                let (i, co) = (row / blk.c_out, row % blk.c_out);
                crate::simd::with_best_isa(|| {
                    for part in 0..parts - 1 {
                        let q = &partials[(i * (parts - 1) + part) * y_img + co * oplane..][..oplane];
                        yr.iter_mut().zip(q).for_each(|(v, &q)| *v += q);
                    }
                    p.ep.apply_bias(yr, p.b.map_or(0.0, |b| b[co]));
                    if let Some(r) = residual {
                        yr.iter_mut().zip(&r[row * oplane..][..oplane]).for_each(|(v, &q)| *v += q);
                        blk.after.apply(yr);
                    }
                })
            }
        };
        if t > 1 {
            y[..n * y_img].par_chunks_mut(rows_per * oplane).enumerate().for_each(finish);
        } else {
            finish((0, &mut y[..n * y_img]));
        }
    })
}

/// One image's expanded channels `channels` (whole panels of [`MR`], or the last ones):
/// expanded over the whole plane into this thread's scratch, depthwise, and projected into
/// out (C_out, OH, OW) as the projection's sum over those channels (no bias or activation),
/// both products on the packed weights.
///
/// # Safety
/// `out` holds C_out·OH·OW floats that no one else accesses during the call; x is the image;
/// the packed weights are the block's; the CPU supports AVX-512F.
unsafe fn channel_range(
    blk: &InvertedResidual,
    pk: &PackedWeights,
    e: &Pointwise,
    x: &[f32],
    channels: std::ops::Range<usize>,
    out: *mut f32,
) {
    let (h, wd) = (blk.h, blk.w);
    let (oh, ow) = blk.out_hw();
    let (plane, oplane, len) = (h * wd, oh * ow, channels.len());
    f32::with_scratch(len * plane + len * oplane, |buf| {
        let (win, dwo) = buf.split_at_mut(len * plane);
        for p in channels.start / MR..channels.end.div_ceil(MR) {
            // SAFETY: panel p's rows are channels p·MR .. (inside `channels`, which are whole
            // panels), landing in the window at their offset; B is the image (C_in, H·W).
            crate::packed::panel_b_in_place(
                pk.expand,
                p,
                0..blk.c_in,
                x.as_ptr(),
                plane,
                plane,
                e.b.map(|b| b[p * MR..].as_ptr()),
                e.ep,
                win.as_mut_ptr().add((p * MR - channels.start) * plane),
                plane,
            );
        }
        for (j, c) in channels.clone().enumerate() {
            let wk = &blk.dw_w[c * 9..][..9];
            let bias = blk.dw_b.map_or(0.0, |b| b[c]);
            let (xr, yr) = (win.as_ptr().add(j * plane), dwo.as_mut_ptr().add(j * oplane));
            // SAFETY: xr is channel c's whole plane; dwo holds len output planes.
            if blk.stride == 1 {
                crate::depthwise::forward_rows_3x3_avx512::<1>(h, wd, xr, 0, 0..oh, wk, bias, blk.dw_ep, yr);
            } else {
                crate::depthwise::forward_rows_3x3_avx512::<2>(h, wd, xr, 0, 0..oh, wk, bias, blk.dw_ep, yr);
            }
        }
        for q in 0..blk.c_out.div_ceil(MR) {
            // SAFETY: K range `channels` of the projection's panel q times their depthwise
            // output (len rows of OH·OW), into out's rows q·MR .. (the caller's contract).
            crate::packed::panel_b_in_place(
                pk.project,
                q,
                channels.clone(),
                dwo.as_ptr(),
                oplane,
                oplane,
                None,
                Epilogue::None,
                out.add(q * MR * oplane),
                oplane,
            );
        }
    });
}

/// The layer whose output rows fill a block's window (see [`rows`]).
#[derive(Clone, Copy)]
enum Fill<'b, 'a> {
    Expand(&'b Pointwise<'a>),
    Stem(&'b Stem<'a>),
}

/// Output rows `out_rows` of one image, strip by strip; with `claims`, only the strips this
/// call claims from them (`out_rows` is then the unit's whole range, which sizes the strips).
/// x: (C_in, H, W) (with a stem: the image); residual and y: (C_out, OH, OW).
///
/// # Safety
/// `y` points at the image's output; the rows this call writes (`out_rows`, or those it
/// claims) are not accessed by anyone else during the call. The CPU supports AVX-512F.
unsafe fn rows(
    blk: &InvertedResidual,
    x: &[f32],
    residual: Option<&[f32]>,
    y: *mut f32,
    out_rows: std::ops::Range<usize>,
    claims: Option<&Rows>,
) {
    let (h, wd, s) = (blk.h, blk.w, blk.stride);
    let (oh, ow) = blk.out_hw();
    let (c_mid, plane, oplane) = (blk.c_mid, h * wd, oh * ow);
    // A range a fifth longer than the L2 budget's strip runs as one strip: split, its last
    // strip would be a row or two, whose products are a few vectors wide (MobileNetV2's
    // 576-channel 14×14 blocks on two threads: strips of 6 + 1 rows, the thread with the
    // 1-row expansion 6% behind the other).
    let budget = blk.strip_rows();
    let r_max = if out_rows.len() * 5 <= budget * 6 { out_rows.len() } else { budget.min(out_rows.len()) };
    // Window capacity in rows: a strip of R output rows reads (R − 1)·S + 3 input rows.
    let cap = (r_max - 1) * s + 3;
    // What makes the window's rows: the expansion from x's rows, or the stem from the image;
    // None when the depthwise layer reads x itself.
    let fill = match (&blk.expand, &blk.stem) {
        (Some(e), _) => Some(Fill::Expand(e)),
        (None, Some(st)) => Some(Fill::Stem(st)),
        (None, None) => None,
    };
    let window_len = if fill.is_some() { c_mid * cap * wd } else { 0 };
    // A stem's taps for the window rows made at once (at most `cap`).
    let taps_len = blk.stem_k() * cap * wd;
    crate::packed::with_local(window_len + c_mid * r_max * ow + taps_len, |buf| {
        let (win, rest) = buf.split_at_mut(window_len);
        let (dwo, taps) = rest.split_at_mut(c_mid * r_max * ow);
        // Expanded rows e_lo .. e_hi are held in the window, row e at win[c·cap·W + (e − e_lo)·W].
        let (mut e_lo, mut e_hi) = (0usize, 0usize);
        // Strips in order: claimed one by one from the unit (rows may be taken from its back
        // meanwhile), or the whole range.
        let mut fixed = out_rows.clone().step_by(r_max);
        while let Some((o0, o1)) = match claims {
            Some(c) => c.claim(r_max).map(|r| (r.start, r.end)),
            None => fixed.next().map(|o0| (o0, (o0 + r_max).min(out_rows.end))),
        } {
            // Input rows the strip's taps read: S·o0 − 1 ..= S·(o1 − 1) + 1, inside the plane.
            let (lo, hi) = ((s * o0).saturating_sub(1), (s * (o1 - 1) + 2).min(h));
            // The strip's depthwise input: channel c's rows from `lo`, `ld` floats apart.
            let (src, ld): (*const f32, usize) = match fill {
                None => (x.as_ptr().add(lo * wd), plane),
                Some(fill) => {
                    if e_hi <= lo || e_lo > lo {
                        // Nothing kept is needed (the first strip, or a stride-2 gap).
                        (e_lo, e_hi) = (lo, lo);
                    } else if e_lo < lo {
                        // Keep rows lo .. e_hi: move them to the window's start.
                        let (from, keep) = ((lo - e_lo) * wd, (e_hi - lo) * wd);
                        for c in 0..c_mid {
                            win.copy_within(c * cap * wd + from..c * cap * wd + from + keep, c * cap * wd);
                        }
                        e_lo = lo;
                    }
                    if hi > e_hi {
                        let cols = (hi - e_hi) * wd;
                        // B (K, cols): the input planes' rows e_hi .. hi, or a stem's taps
                        // for its output rows e_hi .. hi.
                        let (conv, k, b, ldb) = match fill {
                            Fill::Expand(e) => (e, blk.c_in, x.as_ptr().add(e_hi * wd), plane),
                            Fill::Stem(st) => {
                                let k = blk.stem_k();
                                // SAFETY: taps holds K·cap·W ≥ K·cols floats.
                                crate::direct::gather(&st.geom(c_mid), x, e_hi, hi, &mut taps[..k * cols]);
                                (&st.conv, k, taps.as_ptr(), cols)
                            }
                        };
                        // SAFETY: row c of the product lands in channel c's window rows
                        // e_hi .. hi (cap·W apart), inside the window (hi − e_lo ≤ cap).
                        crate::pointwise::run(&crate::pointwise::Operands {
                            m: c_mid,
                            n: cols,
                            k,
                            a: conv.w.as_ptr(),
                            lda: k,
                            b,
                            ldb,
                            bias: conv.b.map(|b| b.as_ptr()),
                            ep: conv.ep,
                            residual: None,
                            after: Epilogue::None,
                            y: win.as_mut_ptr().add((e_hi - e_lo) * wd),
                            ldy: cap * wd,
                        });
                        e_hi = hi;
                    }
                    (win.as_ptr(), cap * wd)
                }
            };
            // Depthwise: channel c's strip into dwo[c·n ..], n = (o1 − o0)·OW.
            let n = (o1 - o0) * ow;
            for c in 0..c_mid {
                let wk = &blk.dw_w[c * 9..][..9];
                let bias = blk.dw_b.map_or(0.0, |b| b[c]);
                let (xr, yr) = (src.add(c * ld), dwo.as_mut_ptr().add(c * n));
                // SAFETY: the window holds rows lo .. hi of channel c from xr (see above), the
                // rows the strip's taps read; dwo holds C_mid·n floats.
                if s == 1 {
                    crate::depthwise::forward_rows_3x3_avx512::<1>(h, wd, xr, lo, o0..o1, wk, bias, blk.dw_ep, yr);
                } else {
                    crate::depthwise::forward_rows_3x3_avx512::<2>(h, wd, xr, lo, o0..o1, wk, bias, blk.dw_ep, yr);
                }
            }
            // Project the strip into y's rows o0 .. o1, then bias, activation, residual.
            let p = &blk.project;
            // SAFETY: y's rows o0 .. o1 of every channel are this call's (see the contract);
            // dwo holds the strip's (C_mid, n) depthwise output.
            crate::pointwise::run(&crate::pointwise::Operands {
                m: blk.c_out,
                n,
                k: c_mid,
                a: p.w.as_ptr(),
                lda: c_mid,
                b: dwo.as_ptr(),
                ldb: n,
                bias: p.b.map(|b| b.as_ptr()),
                ep: p.ep,
                residual: residual.map(|r| (r[o0 * ow..].as_ptr(), oplane)),
                after: blk.after,
                y: y.add(o0 * ow),
                ldy: oplane,
            });
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conv::ConvGeom;
    use crate::matmul::MatRef;
    use proptest::prelude::*;

    fn rand_vec(n: usize, seed: &mut u64) -> Vec<f32> {
        crate::reference::rand_vec(n, seed).into_iter().map(|v| v as f32).collect()
    }

    /// The block layer by layer with the naive convolution (f64 sums, rounded to f32).
    fn unfused(blk: &InvertedResidual, n: usize, x: &[f32], residual: Option<&[f32]>) -> Vec<f32> {
        let (h, w) = (blk.h, blk.w);
        let (oh, ow) = blk.out_hw();
        let pw = |c_in, c_out, h, w| ConvGeom::pointwise(n, c_in, c_out, h, w);
        let conv = |g: &ConvGeom, x: &[f32], w: &[f32], b: Option<&[f32]>, ep: Epilogue| -> Vec<f32> {
            let f = |v: &[f32]| v.iter().map(|&a| a as f64).collect::<Vec<f64>>();
            let mut y = crate::reference::conv2d_naive(g, &f(x), &f(w), b.map(f).as_deref());
            ep.apply(&mut y);
            y.into_iter().map(|v| v as f32).collect()
        };
        let x = match &blk.stem {
            Some(st) => {
                let g = ConvGeom { n, ..st.geom(blk.c_in) };
                conv(&g, x, st.conv.w, st.conv.b, st.conv.ep)
            }
            None => x.to_vec(),
        };
        let mid = match &blk.expand {
            Some(e) => conv(&pw(blk.c_in, blk.c_mid, h, w), &x, e.w, e.b, e.ep),
            None => x,
        };
        let dg = ConvGeom {
            n,
            c_in: blk.c_mid,
            c_out: blk.c_mid,
            h,
            w,
            kh: 3,
            kw: 3,
            stride: (blk.stride, blk.stride),
            padding: (1, 1),
            dilation: (1, 1),
            groups: blk.c_mid,
        };
        let d = conv(&dg, &mid, blk.dw_w, blk.dw_b, blk.dw_ep);
        let mut y = conv(&pw(blk.c_mid, blk.c_out, oh, ow), &d, blk.project.w, blk.project.b, blk.project.ep);
        if let Some(r) = residual {
            y.iter_mut().zip(r).for_each(|(v, &q)| *v += q);
            blk.after.apply(&mut y);
        }
        y
    }

    /// Runs `blk` fused and layer by layer on x (with a random residual when asked): the first
    /// output element that differs by more than 1e-5 of the output's scale, if any.
    fn mismatch(blk: &InvertedResidual, n: usize, x: &[f32], residual: bool, sd: &mut u64) -> Option<String> {
        mismatch_with(blk, n, x, residual, sd, forward)
    }

    /// [`mismatch`] of the kernel `run` (forward, or one of its modes).
    type Kernel = fn(&InvertedResidual, usize, &[f32], Option<&[f32]>, &mut [f32]);
    fn mismatch_with(blk: &InvertedResidual, n: usize, x: &[f32], residual: bool, sd: &mut u64, run: Kernel) -> Option<String> {
        let (oh, ow) = blk.out_hw();
        let res = residual.then(|| rand_vec(n * blk.c_out * oh * ow, sd));
        let want = unfused(blk, n, x, res.as_deref());
        let mut got = vec![f32::NAN; want.len()];
        run(blk, n, x, res.as_deref(), &mut got);
        let scale = want.iter().fold(1.0f32, |m, v| m.max(v.abs()));
        // Written so that a NaN fails the comparison.
        let close = |a: f32, b: f32| (a - b).abs() <= 1e-5 * scale;
        got.iter().zip(&want).enumerate().find(|&(_, (&a, &b))| !close(a, b)).map(|(i, (a, b))| format!("element {i}: {a} vs {b}"))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// The fused block against the layers run one by one: strips of every size, a window
        /// kept across strips at stride 1 and 2, ranges split over threads and images.
        #[test]
        fn fused_block_matches_layers(
            n in 1usize..3, c_in in 1usize..20, t in 1usize..4, c_out in 1usize..20,
            h in 14usize..60, w in 14usize..60, stride in 1usize..3, expand in any::<bool>(),
            residual in any::<bool>(), acts in 0usize..3, seed in 0u64..10_000,
        ) {
            prop_assume!(crate::packed::available());
            let c_mid = if expand { c_in * t } else { c_in };
            let stride = if residual { 1 } else { stride };
            let c_out = if residual { c_in } else { c_out };
            let mut sd = seed;
            let (xw, ew, eb) = (rand_vec(n * c_in * h * w, &mut sd), rand_vec(c_mid * c_in, &mut sd), rand_vec(c_mid, &mut sd));
            let (dw, db) = (rand_vec(c_mid * 9, &mut sd), rand_vec(c_mid, &mut sd));
            let (pw, pb) = (rand_vec(c_out * c_mid, &mut sd), rand_vec(c_out, &mut sd));
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(0.0, 6.0)][acts];
            let blk = InvertedResidual {
                c_in, c_mid, c_out, h, w,
                expand: expand.then_some(Pointwise { w: &ew, b: Some(&eb), ep }),
                stem: None,
                dw_w: &dw, dw_b: Some(&db), dw_ep: ep, stride,
                project: Pointwise { w: &pw, b: Some(&pb), ep: Epilogue::None },
                after: if residual { ep } else { Epilogue::None },
                packed: None,
            };
            prop_assume!(blk.applies());
            let m = mismatch(&blk, n, &xw, residual, &mut sd);
            prop_assert!(m.is_none(), "{}", m.unwrap_or_default());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(16))]
        /// A block that makes its input from the image (a stem): kernels 1 to 7 with any
        /// padding they allow, strips at stride 1 and 2, images and ranges over threads.
        #[test]
        fn fused_block_with_stem_matches_layers(
            n in 1usize..3, c_img in 1usize..4, c_in in 1usize..20, c_out in 1usize..20, k in 1usize..8, pad in 0usize..4,
            h in 28usize..90, w in 28usize..90, stride in 1usize..3, residual in any::<bool>(), seed in 0u64..10_000,
        ) {
            prop_assume!(crate::packed::available() && pad < k);
            let stride = if residual { 1 } else { stride };
            let c_out = if residual { c_in } else { c_out };
            let (bh, bw) = ((h + 2 * pad - k) / 2 + 1, (w + 2 * pad - k) / 2 + 1);
            let mut sd = seed;
            let (xw, sw, sb) = (rand_vec(n * c_img * h * w, &mut sd), rand_vec(c_in * c_img * k * k, &mut sd), rand_vec(c_in, &mut sd));
            let (dw, db) = (rand_vec(c_in * 9, &mut sd), rand_vec(c_in, &mut sd));
            let (pw, pb) = (rand_vec(c_out * c_in, &mut sd), rand_vec(c_out, &mut sd));
            let relu6 = Epilogue::Clamp(0.0, 6.0);
            let blk = InvertedResidual {
                c_in, c_mid: c_in, c_out, h: bh, w: bw,
                expand: None,
                stem: Some(Stem { c_img, h, w, kh: k, kw: k, padding: (pad, pad), conv: Pointwise { w: &sw, b: Some(&sb), ep: relu6 } }),
                dw_w: &dw, dw_b: Some(&db), dw_ep: relu6, stride,
                project: Pointwise { w: &pw, b: Some(&pb), ep: Epilogue::None },
                after: Epilogue::None,
                packed: None,
            };
            prop_assume!(blk.applies());
            let m = mismatch(&blk, n, &xw, residual, &mut sd);
            prop_assert!(m.is_none(), "{}", m.unwrap_or_default());
        }
    }

    /// A stem whose output plane is not the block's input plane, or with an expansion, is
    /// refused.
    #[test]
    fn stem_must_fit_the_block() {
        let (sw, dw, pw, ew) = (vec![0.0; 32 * 27], vec![0.0; 32 * 9], vec![0.0; 16 * 32], vec![0.0; 32 * 32]);
        let stem =
            Stem { c_img: 3, h: 224, w: 224, kh: 3, kw: 3, padding: (1, 1), conv: Pointwise { w: &sw, b: None, ep: Epilogue::None } };
        let blk = |h: usize, expand: bool| InvertedResidual {
            c_in: 32,
            c_mid: 32,
            c_out: 16,
            h,
            w: 112,
            expand: expand.then_some(Pointwise { w: &ew, b: None, ep: Epilogue::None }),
            stem: Some(stem),
            dw_w: &dw,
            dw_b: None,
            dw_ep: Epilogue::None,
            stride: 1,
            project: Pointwise { w: &pw, b: None, ep: Epilogue::None },
            after: Epilogue::None,
            packed: None,
        };
        assert_eq!(blk(112, false).applies(), available());
        assert!(!blk(111, false).applies());
        assert!(!blk(112, true).applies());
    }

    /// A block split by expanded channels, with its 1×1 weights packed as the caller keeps
    /// them, against the layers: `forward` (which must take the split) on a pool of `threads`.
    #[allow(clippy::too_many_arguments)] // the block's shape, activations and the run
    fn split_mismatch(
        (c_in, c_mid, c_out, h, w, stride): (usize, usize, usize, usize, usize, usize),
        n: usize,
        residual: bool,
        ep: Epilogue,
        after: Epilogue,
        threads: usize,
        seed: u64,
    ) -> Option<String> {
        let mut sd = seed;
        let (xw, ew, eb) = (rand_vec(n * c_in * h * w, &mut sd), rand_vec(c_mid * c_in, &mut sd), rand_vec(c_mid, &mut sd));
        let (dw, db) = (rand_vec(c_mid * 9, &mut sd), rand_vec(c_mid, &mut sd));
        let (pw, pb) = (rand_vec(c_out * c_mid, &mut sd), rand_vec(c_out, &mut sd));
        let (pe, pp) = (PackedA::new(MatRef::row_major(&ew, c_mid, c_in)), PackedA::new(MatRef::row_major(&pw, c_out, c_mid)));
        let blk = InvertedResidual {
            c_in,
            c_mid,
            c_out,
            h,
            w,
            expand: Some(Pointwise { w: &ew, b: Some(&eb), ep }),
            stem: None,
            dw_w: &dw,
            dw_b: Some(&db),
            dw_ep: ep,
            stride,
            project: Pointwise { w: &pw, b: Some(&pb), ep },
            after: if residual { after } else { Epilogue::None },
            packed: Some(PackedWeights { expand: &pe, project: &pp }),
        };
        assert!(blk.by_channels() && blk.applies(), "{c_in}→{c_mid}→{c_out} at {h}×{w} s{stride}");
        assert!(!InvertedResidual { packed: None, ..blk }.applies(), "a split without packed weights");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("a pool");
        pool.install(|| mismatch(&blk, n, &xw, residual, &mut sd))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Planes of at most SPLIT_MAX_PIXELS split by channels: channel counts off the panels' 32,
        /// parts over one to three threads, batches, stride 1 and 2, activations, residual.
        #[test]
        fn channel_split_matches_layers(
            c_in in 1usize..40, c_mid in 1usize..300, c_out in 1usize..70, h in 1usize..15, w in 1usize..15,
            stride in 1usize..3, n in 1usize..3, threads in 1usize..4, residual: bool, acts in 0usize..9, seed in 0u64..10_000,
        ) {
            prop_assume!(crate::packed::available());
            let (c_out, stride) = if residual { (c_in, 1) } else { (c_out, stride) };
            let eps = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(0.0, 6.0)];
            let m = split_mismatch((c_in, c_mid, c_out, h, w, stride), n, residual, eps[acts % 3], eps[acts / 3], threads, seed);
            prop_assert!(m.is_none(), "{}", m.unwrap_or_default());
        }
    }

    /// MobileNetV2's blocks that split by channels (96→576→160 stride 2 from 14×14, the 7×7
    /// 160→960→160 with its residual and 160→960→320), and a block whose expansion and parts
    /// run past one K block of the packed GEMM (C_in 200; parts of 256 channels), on one and
    /// two threads.
    #[test]
    fn channel_split_network_blocks_match_layers() {
        if !crate::packed::available() {
            return;
        }
        let relu6 = Epilogue::Clamp(0.0, 6.0);
        for (shape, residual) in [
            ((96, 576, 160, 14, 14, 2), false),
            ((160, 960, 160, 7, 7, 1), true),
            ((160, 960, 320, 7, 7, 1), false),
            ((200, 1000, 40, 5, 6, 1), false),
        ] {
            for threads in [1, 2] {
                let m = split_mismatch(shape, 1, residual, relu6, Epilogue::None, threads, 3);
                assert!(m.is_none(), "{shape:?} on {threads} threads: {}", m.unwrap_or_default());
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Any interleaving of an owner's claims and thieves' steals hands out every row of the
        /// unit exactly once.
        #[test]
        fn claims_and_steals_cover_each_row_once(start in 0usize..50, len in 0usize..200, ops in proptest::collection::vec((any::<bool>(), 1usize..9), 0..60)) {
            let rows = Rows::new(start, start + len);
            let mut got = vec![0u32; start + len];
            let mut take = |r: std::ops::Range<usize>| r.for_each(|i| got[i] += 1);
            for (steal, k) in ops {
                if steal {
                    if let Some(r) = rows.steal(k) {
                        prop_assert!(r.len() >= k / 2 && !r.is_empty());
                        take(r);
                    }
                } else if let Some(r) = rows.claim(k) {
                    prop_assert!(r.len() <= k && !r.is_empty());
                    take(r);
                }
            }
            while let Some(r) = rows.claim(3) {
                take(r);
            }
            prop_assert!(rows.steal(1).is_none());
            prop_assert!(got[start..].iter().all(|&c| c == 1) && got[..start].iter().all(|&c| c == 0), "{got:?}");
        }
    }

    /// A unit whose back rows another thread took ([`Rows::steal`]): the owner's claimed strips
    /// and the stolen range together write every row once, as the layers compute it.
    #[test]
    fn stolen_rows_match_layers() {
        if !crate::packed::available() {
            return;
        }
        fn owner_and_thief(blk: &InvertedResidual, _n: usize, x: &[f32], residual: Option<&[f32]>, y: &mut [f32]) {
            let (oh, _) = blk.out_hw();
            let claims = Rows::new(0, oh);
            let first = claims.claim(3).expect("rows to claim");
            let stolen = claims.steal(STEAL_MIN_ROWS).expect("rows to steal");
            assert!(first.end <= stolen.start && stolen.end == oh && claims.steal(oh).is_none());
            // SAFETY: AVX-512F checked; the owner writes rows 0 .. stolen.start (the strip
            // claimed above is written again, identically), the thief the rest.
            unsafe {
                rows(blk, x, residual, y.as_mut_ptr(), 0..oh, Some(&Rows::new(0, stolen.start)));
                rows(blk, x, residual, y.as_mut_ptr(), stolen, None);
            }
        }
        for (stride, expand) in [(1, true), (2, true), (1, false)] {
            let (c_in, c_out, h, w) = (8, 8, 41, 23);
            let c_mid = if expand { 48 } else { c_in };
            let mut sd = 9;
            let (xw, ew) = (rand_vec(c_in * h * w, &mut sd), rand_vec(c_mid * c_in, &mut sd));
            let (dw, pw) = (rand_vec(c_mid * 9, &mut sd), rand_vec(c_out * c_mid, &mut sd));
            let blk = InvertedResidual {
                c_in,
                c_mid,
                c_out,
                h,
                w,
                expand: expand.then_some(Pointwise { w: &ew, b: None, ep: Epilogue::Relu }),
                stem: None,
                dw_w: &dw,
                dw_b: None,
                dw_ep: Epilogue::Clamp(0.0, 6.0),
                stride,
                project: Pointwise { w: &pw, b: None, ep: Epilogue::None },
                after: if stride == 1 { Epilogue::Relu } else { Epilogue::None },
                packed: None,
            };
            let m = mismatch_with(&blk, 1, &xw, stride == 1, &mut sd, owner_and_thief);
            assert!(m.is_none(), "stride {stride}: {}", m.unwrap_or_default());
        }
    }

    /// Small strips: a block whose strip is one or two rows, so the window moves every row.
    #[test]
    fn one_row_strips_match_layers() {
        if !crate::packed::available() {
            return;
        }
        for stride in [1, 2] {
            let (c_in, c_mid, c_out, h, w) = (8, 384, 8, 40, 120);
            let mut sd = 7;
            let (xw, ew) = (rand_vec(c_in * h * w, &mut sd), rand_vec(c_mid * c_in, &mut sd));
            let (dw, pw) = (rand_vec(c_mid * 9, &mut sd), rand_vec(c_out * c_mid, &mut sd));
            let blk = InvertedResidual {
                c_in,
                c_mid,
                c_out,
                h,
                w,
                expand: Some(Pointwise { w: &ew, b: None, ep: Epilogue::Relu }),
                stem: None,
                dw_w: &dw,
                dw_b: None,
                dw_ep: Epilogue::Clamp(0.0, 6.0),
                stride,
                project: Pointwise { w: &pw, b: None, ep: Epilogue::None },
                after: Epilogue::None,
                packed: None,
            };
            assert!(blk.strip_rows() <= 2, "{}", blk.strip_rows());
            let m = mismatch(&blk, 1, &xw, false, &mut sd);
            assert!(m.is_none(), "stride {stride}: {}", m.unwrap_or_default());
        }
    }
}
