//! Winograd F(4×4, 3×3) for layers whose whole batch has few tiles (a ResNet's last stages
//! on CIFAR: 32 images of 4×4 are 32 tiles), split over output-channel panels instead of
//! tiles, f32 with AVX-512.
//!
//! The tile-split path ([`super::forward_impl`]) transforms all of U = G g Gᵀ per call and
//! then has every block read all of it: at 512 → 512 channels that is 37 MiB written and
//! read twice for 32 tiles of work, and the weights' bandwidth, not arithmetic, set the
//! time (forward 10.9 ms, input gradient 14.5 ms for 2.4 GFLOP). Here the input is
//! transformed once for the batch (V, small: C_in · 36 · tiles) and packed for
//! [`crate::packed`]'s microkernel, and each task takes a panel of [`MR`] output channels:
//! it transforms its filters [`KW`] input channels at a time straight into packed-A order
//! (the weight transform's lanes are (input channel, output channel) pairs, so its output
//! planes *are* the packed panels), multiplies them into Cᵀ while they are in L1/L2, and
//! ends with the output transform, lanes (tile, output channel). U never exists whole.
//!
//! The weight gradient ([`backward_weight`]) is the same by panels of output channels: Ŷ
//! (A dY Aᵀ) is packed as the A panel, V as B, and each panel's 36 products are summed over
//! the tiles in registers and transformed (Gᵀ M G) into its rows of gw, with no per-thread
//! U-sized partial sums to add up (which had kept 512-channel layers on im2col).

use super::{a4, at6, g3, gt3_planes, input_transform_best, Block, OutPtr, Pl, A_T, LANES, M_T, NXI};
use crate::conv::{ConvGeom, Epilogue, SyncPtr};
use crate::matmul::MatRef;
use crate::packed::{self, MR, NR};
use crate::Float;
use rayon::prelude::*;
use std::ops::Range;

/// Most tiles over the batch for which the panel path is used. Measured (forward + both
/// gradients, 2 threads, against the tile-split path): 512 → 512 at 32×4×4 (32 tiles)
/// 47.5 → 18 ms, 256 → 256 at 32×8×8 (128) 25 → 16 ms, 64 → 64 at 1×32×32 (64) 1.4 → 1.0 ms;
/// at 256 tiles (64×8×8) within noise, at 512 (128 → 128, 32×16×16) 18 → 22 ms: each panel's
/// Cᵀ (36·tiles·MR floats) and Ŷ outgrow L2 while U is shared by enough tiles.
const MAX_TILES: usize = 128;
/// Fewest output channels: two panels, so that both threads have one.
const MIN_OUT: usize = 2 * MR;
/// Input channels per step of a panel's weight transform: 63 planes (taps, G·g, U) of
/// KW·MR floats = 516 KiB, inside L2 with the panel's Cᵀ.
const KW: usize = 64;
/// Tiles per step of the output transform.
const OT: usize = 8;

/// Tiles of `g`'s whole batch.
fn tiles(g: &ConvGeom) -> usize {
    g.out_hw().map_or(0, |(oh, ow)| g.n * oh.div_ceil(M_T) * ow.div_ceil(M_T))
}

/// True when the forward of `g` (a geometry [`super::applies`] accepts) runs by panels.
pub(super) fn applies(g: &ConvGeom) -> bool {
    packed::available() && tiles(g) <= MAX_TILES && g.c_out >= MIN_OUT && g.c_in >= LANES
}

/// The filters of a forward by panels.
#[derive(Clone, Copy)]
pub(super) enum Filters<'a> {
    /// w (C_out, C_in, 3, 3) of this convolution.
    Direct(&'a [f32]),
    /// An input gradient's: w (C_in, C_out, 3, 3) of the forward layer, whose filters this
    /// convolution uses rotated 180° with the channel axes swapped.
    Flipped(&'a [f32]),
}

/// y = ep(conv(x, w) + b) by panels. x: (N, C_in, H, W); y: (N, C_out, OH, OW), overwritten.
pub(super) fn forward(g: &ConvGeom, x: &[f32], w: Filters<'_>, b: Option<&[f32]>, ep: Epilogue, y: &mut [f32]) {
    let (oh, ow) = g.out_hw().expect("ConvGeom checked by caller");
    assert!(x.len() >= g.n * g.c_in * g.h * g.w && y.len() >= g.n * g.c_out * oh * ow);
    assert!(match w {
        Filters::Direct(w) | Filters::Flipped(w) => w.len() >= g.c_out * g.c_in * 9,
    });
    assert!(b.is_none_or(|b| b.len() >= g.c_out));
    let blk = Block::new(g, g.n * oh.div_ceil(M_T), 0, ep);
    let pbl = packed::packed_b_len(g.c_in, blk.tiles());
    f32::with_aux_scratch(NXI * pbl, |pb| {
        pack_v(&blk, x, pb, pbl);
        let out = OutPtr(y.as_mut_ptr());
        let pl = plane_len(g.c_in);
        let scratch = 63 * pl + NXI * blk.tiles() * MR + 40 * OT * MR;
        (0..g.c_out.div_ceil(MR)).into_par_iter().for_each(|p| {
            // SAFETY: AVX-512F (`applies`); the buffer has the length panel_forward takes.
            f32::with_scratch(scratch, |buf| unsafe { panel_forward(&blk, w, pb, pbl, p, b, &out, buf) })
        });
    });
}

/// V = Bᵀ d B of the whole batch, in parallel over ranges of input channels (`chunk` each):
/// `pack(chans, v)` gets each range's V (36, chans.len(), nbp) on the task's scratch.
fn transform_input(blk: &Block<'_>, x: &[f32], chunk: usize, pack: impl Fn(Range<usize>, &[f32]) + Sync) {
    let (cin, nbp) = (blk.g.c_in, blk.nbp);
    (0..cin.div_ceil(chunk)).into_par_iter().for_each(|i| {
        let chans = i * chunk..((i + 1) * chunk).min(cin);
        let nc = chans.len();
        f32::with_scratch(NXI * nc * nbp + 2 * NXI * nbp + A_T * (M_T * blk.tw + 2), |buf| {
            let (v, rest) = buf.split_at_mut(NXI * nc * nbp);
            let (t1, rest) = rest.split_at_mut(NXI * nbp);
            let (t2, pad) = rest.split_at_mut(NXI * nbp);
            input_transform_best(blk, x, chans.clone(), v, t1, t2, pad);
            pack(chans, v);
        });
    });
}

/// V_ξ (C_in, tiles) of the whole batch for ξ = 0..36, each packed as a GEMM's B at
/// pb[ξ·pbl ..] ([`packed::pack_b`]'s layout).
fn pack_v(blk: &Block<'_>, x: &[f32], pb: &mut [f32], pbl: usize) {
    let (cin, nt, nbp) = (blk.g.c_in, blk.tiles(), blk.nbp);
    let pbp = SyncPtr(pb.as_mut_ptr());
    transform_input(blk, x, cin.div_ceil(4 * crate::num_threads().max(1)).max(1), |chans, v| {
        for xi in 0..NXI {
            let b = MatRef { data: &v[xi * chans.len() * nbp..], rows: chans.len(), cols: nt, rs: nbp as isize, cs: 1 };
            // SAFETY: pb holds 36 packed (C_in, tiles) matrices of pbl floats; this task
            // writes rows `chans` of each, which no other task writes.
            unsafe { packed::pack_b_rows(b, chans.start, cin, pbp.get().add(xi * pbl)) };
        }
    });
}

/// Lanes of one plane of a panel's weight transform, (input channel, output channel) pairs,
/// plus a cache line so that its planes (read and written three and six at a time) do not
/// all fall in the same L1 set, as 8 KiB apart they would.
fn plane_len(cin: usize) -> usize {
    KW.min(cin) * MR + 16
}

/// Output channels p·MR .. p·MR + MR: their U, 36 products with the packed V, and the output
/// transform into y. `buf`: 63·plane_len(C_in) + 36·tiles·MR + 40·OT·MR floats of scratch.
/// Compiled for AVX-512 as a whole, so that the transforms inlined here run on wide registers.
///
/// # Safety
/// The CPU supports AVX-512F.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx2,fma"))]
#[allow(clippy::too_many_arguments)] // the panel, its operands and its scratch
unsafe fn panel_forward(
    blk: &Block<'_>,
    w: Filters<'_>,
    pb: &[f32],
    pbl: usize,
    p: usize,
    b: Option<&[f32]>,
    out: &OutPtr<f32>,
    buf: &mut [f32],
) {
    let g = blk.g;
    let (cin, nt) = (g.c_in, blk.tiles());
    let rows = MR.min(g.c_out - p * MR);
    let pl = plane_len(cin);
    let sx = nt * MR; // one ξ of Cᵀ: (tile, output channel)
    let ol = OT * MR;
    let (taps, rest) = buf.split_at_mut(9 * pl);
    let (gg, rest) = rest.split_at_mut(18 * pl);
    let (uu, rest) = rest.split_at_mut(NXI * pl);
    let (ct, rest) = rest.split_at_mut(NXI * sx);
    for k0 in (0..cin).step_by(KW) {
        let kc = KW.min(cin - k0);
        fill_taps(w, g, p * MR, rows, k0, kc, taps, pl);
        // U = G g Gᵀ as in `weight_transform`, on kc·MR lanes: plane ξ of uu is then U_ξ's
        // rows p·MR .. + MR, columns k0 .. k0 + kc, packed k-major for the microkernel.
        for kj in 0..3 {
            g3(taps, Pl { off: kj * pl, stride: 3 * pl }, gg, Pl { off: kj * pl, stride: 3 * pl }, kc * MR);
        }
        for a in 0..A_T {
            g3(gg, Pl { off: 3 * a * pl, stride: pl }, uu, Pl { off: A_T * a * pl, stride: pl }, kc * MR);
        }
        for xi in 0..NXI {
            let a = uu[xi * pl..].as_ptr();
            let bx = &pb[xi * pbl..(xi + 1) * pbl];
            for j0 in (0..nt).step_by(NR) {
                let wd = NR.min(nt - j0);
                // SAFETY: AVX-512 (`applies`); a holds kc·MR floats; B's panel j0 / NR has
                // rows k0 .. k0 + kc of wd floats at j0·cin + k0·wd (packed_b's layout);
                // ct's tiles j0 .. j0 + wd of this ξ hold MR floats each, this task's own.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    packed::micro_dispatch(
                        wd,
                        kc,
                        a,
                        bx.as_ptr().add(j0 * cin + k0 * wd),
                        wd,
                        ct.as_mut_ptr().add(xi * sx + j0 * MR),
                        MR,
                        k0 > 0,
                        a,
                    )
                };
            }
        }
    }
    let (s, t) = rest.split_at_mut(24 * ol);
    for j0 in (0..nt).step_by(OT) {
        let jn = OT.min(nt - j0);
        // Y = Aᵀ M A on jn·MR lanes: along H (s plane 6r + bc), then along W (t plane 4r + c).
        for bc in 0..A_T {
            at6(ct, Pl { off: bc * sx + j0 * MR, stride: A_T * sx }, s, Pl { off: bc * ol, stride: A_T * ol }, jn * MR, 0.0);
        }
        for r in 0..M_T {
            at6(s, Pl { off: A_T * r * ol, stride: ol }, t, Pl { off: M_T * r * ol, stride: ol }, jn * MR, 0.0);
        }
        scatter_tiles(blk, t, ol, j0, jn, p * MR, rows, b, out);
    }
}

/// Filter taps of output channels co0 .. co0 + rows (zero up to MR) and input channels
/// k0 .. k0 + kc into `taps`: plane k (= 3·ki + kj, `pl` floats apart) holds tap k at lane
/// ci·MR + r for input channel k0 + ci and output channel co0 + r.
#[allow(clippy::too_many_arguments)] // the panel's channel ranges and the buffer's plane stride
#[inline(always)]
fn fill_taps(w: Filters<'_>, g: &ConvGeom, co0: usize, rows: usize, k0: usize, kc: usize, taps: &mut [f32], pl: usize) {
    // SAFETY: the panel path runs only with AVX-512F (`applies`).
    #[cfg(target_arch = "x86_64")]
    unsafe {
        fill_taps_avx512(w, g, co0, rows, k0, kc, taps, pl)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, g, co0, rows, k0, kc, taps, pl);
        unreachable!("winograd panels need AVX-512")
    }
}

/// [`fill_taps`] for AVX-512: per input channel and 16 output channels, the 16 filters' nine
/// taps loaded as 16 vectors, transposed in registers, and stored as nine whole vectors of
/// 16 output channels (filters past `rows` load as zeros). The scalar copy moved one float per
/// 3.3 cycles and was a third of a 512-channel layer's time; 16-lane gathers were no faster.
///
/// # Safety
/// AVX-512F; w and taps as [`fill_taps`] requires.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn fill_taps_avx512(w: Filters<'_>, g: &ConvGeom, co0: usize, rows: usize, k0: usize, kc: usize, taps: &mut [f32], pl: usize) {
    use std::arch::x86_64::*;
    // Filter (co0 + r, k0 + ci): nine floats at start(ci, r); tap k goes to plane k, or to
    // plane 8 − k when flipped (rotated 180°).
    let (w, flipped) = match w {
        Filters::Direct(w) => (w, false),
        Filters::Flipped(w) => (w, true),
    };
    let start = |ci: usize, r: usize| if flipped { ((k0 + ci) * g.c_out + co0 + r) * 9 } else { ((co0 + r) * g.c_in + k0 + ci) * 9 };
    assert!(kc >= 1 && (1..=MR).contains(&rows) && taps.len() >= 8 * pl + kc * MR);
    assert!(w.len() >= start(kc - 1, rows - 1) + 9 && w.len() >= start(0, rows - 1) + 9);
    let nine: __mmask16 = 0x1ff;
    for half in 0..MR / 16 {
        let n = rows.saturating_sub(16 * half).min(16);
        for ci in 0..kc {
            let mut v: [__m512; 16] = std::array::from_fn(|r| {
                // SAFETY: filter (co0 + 16·half + r, k0 + ci) lies inside w for r < n (asserted).
                if r < n {
                    _mm512_maskz_loadu_ps(nine, w.as_ptr().add(start(ci, 16 * half + r)))
                } else {
                    _mm512_setzero_ps()
                }
            });
            crate::simd::transpose16(&mut v);
            for (k, t) in v.iter().take(9).enumerate() {
                let plane = if flipped { 8 - k } else { k };
                // SAFETY: plane < 9 and ci < kc: inside taps (asserted).
                _mm512_storeu_ps(taps.as_mut_ptr().add(plane * pl + ci * MR + 16 * half), *t);
            }
        }
    }
}

/// Writes tiles j0 .. j0 + jn of output channels co0 .. co0 + rows from `t` (16 planes `ol`
/// apart, lane (j − j0)·MR + r), adding bias and applying the block's epilogue.
#[allow(clippy::too_many_arguments)] // the tile and channel ranges with their source
fn scatter_tiles(
    blk: &Block<'_>,
    t: &[f32],
    ol: usize,
    j0: usize,
    jn: usize,
    co0: usize,
    rows: usize,
    b: Option<&[f32]>,
    out: &OutPtr<f32>,
) {
    let g = blk.g;
    let (oh, ow, tw) = (blk.oh, blk.ow, blk.tw);
    for jj in 0..jn {
        let q = (j0 + jj) / tw;
        let (img, ty, tx) = (q / blk.th, q % blk.th, (j0 + jj) % tw);
        let cols = M_T.min(ow - M_T * tx);
        for r in 0..rows {
            let co = co0 + r;
            let bias = b.map_or(0.0, |b| b[co]);
            for pr in 0..M_T.min(oh - M_T * ty) {
                let oy = M_T * ty + pr;
                // SAFETY: columns 4·tx .. + cols of row oy of plane (img, co) lie inside y;
                // only the task of this channel's panel writes them.
                let dst = unsafe { out.slice(((img * g.c_out + co) * oh + oy) * ow + M_T * tx, cols) };
                for (pc, d) in dst.iter_mut().enumerate() {
                    *d = t[(M_T * pr + pc) * ol + jj * MR + r] + bias;
                }
                blk.ep.apply(dst);
            }
        }
    }
}

/// Input channels per step of a panel's weight gradient: five B panels.
const NC: usize = 5 * NR;

/// gw = d(conv)/dw · gy by panels of output channels (see the module notes). x: (N, C_in, H,
/// W); gy: (N, C_out, OH, OW); gw: (C_out, C_in, 3, 3), overwritten.
pub(super) fn backward_weight(g: &ConvGeom, x: &[f32], gy: &[f32], gw: &mut [f32]) {
    assert!(applies(g), "winograd panels: unsupported layer {g:?}");
    let (oh, ow) = g.out_hw().expect("checked by applies");
    assert!(x.len() >= g.n * g.c_in * g.h * g.w && gy.len() >= g.n * g.c_out * oh * ow && gw.len() >= g.c_out * g.c_in * 9);
    let blk = Block::new(g, g.n * oh.div_ceil(M_T), 0, crate::conv::Epilogue::None);
    let nt = blk.tiles();
    let pbl = packed::packed_b_len(nt, g.c_in);
    f32::with_aux_scratch(NXI * pbl, |pb| {
        pack_vt(&blk, x, pb, pbl);
        let lt = nt * MR;
        let scratch = 76 * lt + NXI * NC * MR + 27 * (NC * MR + 16);
        let gwp = SyncPtr(gw.as_mut_ptr());
        (0..g.c_out.div_ceil(MR)).into_par_iter().for_each(|p| {
            // SAFETY: AVX-512F (`applies`); the buffer has the length panel_weight_grad takes;
            // gw's rows of panel p are written by this task alone.
            f32::with_scratch(scratch, |buf| unsafe { panel_weight_grad(&blk, gy, pb, pbl, p, gwp, buf) })
        });
    });
}

/// V_ξᵀ (tiles, C_in) of the whole batch for ξ = 0..36, each packed as a GEMM's B (K = tiles,
/// N = C_in) at pb[ξ·pbl ..]; the channel ranges cover whole B panels.
fn pack_vt(blk: &Block<'_>, x: &[f32], pb: &mut [f32], pbl: usize) {
    let (cin, nt, nbp) = (blk.g.c_in, blk.tiles(), blk.nbp);
    let pbp = SyncPtr(pb.as_mut_ptr());
    let chunk = cin.div_ceil(4 * crate::num_threads().max(1)).div_ceil(NR).max(1) * NR;
    transform_input(blk, x, chunk, |chans, v| {
        for xi in 0..NXI {
            for j0 in chans.clone().step_by(NR) {
                let wd = NR.min(cin - j0);
                // SAFETY: B panel j0 / NR of V_ξᵀ (nt·wd floats at j0·nt, packed_b's layout)
                // lies inside pb's ξ-th matrix and belongs to this task's channels.
                let panel = unsafe { std::slice::from_raw_parts_mut(pbp.get().add(xi * pbl + j0 * nt), nt * wd) };
                for (t, row) in panel.chunks_exact_mut(wd).enumerate() {
                    for (c, d) in row.iter_mut().enumerate() {
                        *d = v[(xi * chans.len() + j0 - chans.start + c) * nbp + t];
                    }
                }
            }
        }
    });
}

/// Rows p·MR .. p·MR + MR of gw: Ŷ of those output channels (lanes (tile, channel): each plane
/// ξ is then a packed A panel over K = tiles), its 36 products with the packed V_ξᵀ, NC input
/// channels at a time, and Gᵀ M G of each filter. `buf`: 76·tiles·MR + 36·NC·MR +
/// 27·(NC·MR + 16) floats of scratch.
///
/// # Safety
/// The CPU supports AVX-512F; gw (behind `gwp`) holds C_out·C_in·9 floats, and rows p·MR ..
/// p·MR + MR of it are accessed by no one else during the call.
#[cfg_attr(target_arch = "x86_64", target_feature(enable = "avx512f,avx2,fma"))]
unsafe fn panel_weight_grad(blk: &Block<'_>, gy: &[f32], pb: &[f32], pbl: usize, p: usize, gwp: SyncPtr<f32>, buf: &mut [f32]) {
    let g = blk.g;
    let (cin, cout, nt) = (g.c_in, g.c_out, blk.tiles());
    let (oh, ow, tw) = (blk.oh, blk.ow, blk.tw);
    let (co0, rows) = (p * MR, MR.min(cout - p * MR));
    let lt = nt * MR;
    let (d, rest) = buf.split_at_mut(16 * lt);
    let (h, rest) = rest.split_at_mut(24 * lt);
    let (yh, rest) = rest.split_at_mut(NXI * lt);
    let (ct, rest) = rest.split_at_mut(NXI * NC * MR);
    let pl = NC * MR + 16; // planes of the filter transform, a cache line apart from 4 KiB multiples
    let (half, out9) = rest.split_at_mut(18 * pl);
    // d plane 4·pr + pc, lane t·MR + r: pixel (pr, pc) of tile t in output channel co0 + r.
    d.iter_mut().for_each(|v| *v = 0.0);
    for t in 0..nt {
        let q = t / tw;
        let (img, ty, tx) = (q / blk.th, q % blk.th, t % tw);
        let cols = M_T.min(ow - M_T * tx);
        for r in 0..rows {
            for pr in 0..M_T.min(oh - M_T * ty) {
                let src = &gy[((img * cout + co0 + r) * oh + M_T * ty + pr) * ow + M_T * tx..][..cols];
                for (pc, &v) in src.iter().enumerate() {
                    d[(M_T * pr + pc) * lt + t * MR + r] = v;
                }
            }
        }
    }
    // Ŷ = A dY Aᵀ: along W (h plane 6·pr + b), then along H (yh plane 6a + b = ξ).
    for pr in 0..M_T {
        a4(d, Pl { off: M_T * pr * lt, stride: lt }, h, Pl { off: A_T * pr * lt, stride: lt }, lt);
    }
    for b in 0..A_T {
        a4(h, Pl { off: b * lt, stride: A_T * lt }, yh, Pl { off: b * lt, stride: A_T * lt }, lt);
    }
    for n0 in (0..cin).step_by(NC) {
        let nc = NC.min(cin - n0);
        let lanes = nc * MR;
        for xi in 0..NXI {
            let a = yh[xi * lt..].as_ptr();
            for j0 in (n0..n0 + nc).step_by(NR) {
                let wd = NR.min(cin - j0);
                // SAFETY: AVX-512 (caller); a holds nt·MR floats; B panel j0 / NR of V_ξᵀ holds
                // nt rows of wd floats at j0·nt; ct's columns j0 − n0 .. + wd of this ξ hold
                // MR floats each, this task's own.
                #[cfg(target_arch = "x86_64")]
                unsafe {
                    packed::micro_dispatch(
                        wd,
                        nt,
                        a,
                        pb[xi * pbl + j0 * nt..].as_ptr(),
                        wd,
                        ct.as_mut_ptr().add(xi * NC * MR + (j0 - n0) * MR),
                        MR,
                        false,
                        a,
                    )
                };
            }
        }
        // gw = Gᵀ M G on (input channel, output channel) lanes: along b for each a (half plane
        // 3a + kj), then along a (out9 plane 3·ki + kj).
        let sm = NC * MR;
        for a in 0..A_T {
            gt3_planes(ct, Pl { off: A_T * a * sm, stride: sm }, half, Pl { off: 3 * a * pl, stride: pl }, lanes);
        }
        for kj in 0..3 {
            gt3_planes(half, Pl { off: kj * pl, stride: 3 * pl }, out9, Pl { off: kj * pl, stride: 3 * pl }, lanes);
        }
        store_filters(out9, pl, co0, rows, n0, nc, cin, gwp);
    }
}

/// gw[co0 + r][n0 + ci][k] = out9[k·pl + ci·MR + r] for r < rows, ci < nc: the transpose of
/// [`fill_taps`], 16 output channels at a time through a register transpose.
///
/// # Safety
/// AVX-512F; as [`panel_weight_grad`]: gw's rows co0 .. co0 + rows are this caller's; out9
/// holds 9 planes of pl ≥ nc·MR floats.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
unsafe fn store_filters(out9: &[f32], pl: usize, co0: usize, rows: usize, n0: usize, nc: usize, cin: usize, gwp: SyncPtr<f32>) {
    assert!(out9.len() >= 8 * pl + nc * MR && rows <= MR);
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::*;
        let nine: __mmask16 = 0x1ff;
        for half in 0..rows.div_ceil(16) {
            let n = (rows - 16 * half).min(16);
            for ci in 0..nc {
                let mut v: [__m512; 16] = std::array::from_fn(|k| {
                    if k < 9 {
                        _mm512_loadu_ps(out9.as_ptr().add(k * pl + ci * MR + 16 * half))
                    } else {
                        _mm512_setzero_ps()
                    }
                });
                crate::simd::transpose16(&mut v);
                for (r, t) in v.iter().take(n).enumerate() {
                    _mm512_mask_storeu_ps(gwp.get().add(((co0 + 16 * half + r) * cin + n0 + ci) * 9), nine, *t);
                }
            }
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (pl, co0, rows, n0, nc, cin, gwp);
        unreachable!("winograd panels need AVX-512")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    fn uniform(n: usize, seed: &mut u64) -> Vec<f64> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                ((*seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64 - 0.5
            })
            .collect()
    }

    fn f32s(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&a| a as f32).collect()
    }

    fn abs(v: &[f64]) -> Vec<f64> {
        v.iter().map(|a| a.abs()).collect()
    }

    /// max |got − want| over the largest magnitude the direct sum reaches (Σ|x||w| + |b|).
    fn scaled(got: &[f32], want: &[f64], scale: &[f64]) -> f64 {
        reference::max_abs_diff(got, want) / scale.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()))
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// Forward (bias, each activation), input and weight gradients by panels against the f64 naive
        /// convolution: partial channel panels (C_out not a multiple of 32), input channels on
        /// both sides of a KW step, partial tiles, padding 0–2, tile counts up to MAX_TILES.
        /// Tolerance as for the tile-split path (see `f32_matches_naive` in the parent).
        #[test]
        fn panels_match_naive(n in 1usize..5, cin in 8usize..80, cout in 64usize..100, h in 1usize..14, w in 1usize..14,
                              ph in 0usize..3, pw in 0usize..3, act in 0usize..3, seed in 0u64..10_000) {
            if !packed::available() {
                return Ok(());
            }
            let g = ConvGeom { n, c_in: cin, h, w, c_out: cout, kh: 3, kw: 3, stride: (1, 1), padding: (ph, pw), dilation: (1, 1), groups: 1 };
            prop_assume!(g.out_hw().is_some() && tiles(&g) <= MAX_TILES);
            let (oh, ow) = g.out_hw().unwrap();
            let mut s = seed;
            let (x, wt, b, gy) = (uniform(n * cin * h * w, &mut s), uniform(cout * cin * 9, &mut s), uniform(cout, &mut s), uniform(n * cout * oh * ow, &mut s));
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.2, 0.3)][act];
            let mut want = reference::conv2d_naive(&g, &x, &wt, Some(&b));
            ep.apply(&mut want);
            let scale = reference::conv2d_naive(&g, &abs(&x), &abs(&wt), Some(&abs(&b)));
            let mut y = vec![f32::NAN; want.len()];
            forward(&g, &f32s(&x), Filters::Direct(&f32s(&wt)), Some(&f32s(&b)), ep, &mut y);
            let e = scaled(&y, &want, &scale);
            prop_assert!(e <= 1e-4, "forward: scaled error {e:.3e} for {g:?}");

            // The input gradient through the public entry point, which takes this path when
            // the transposed geometry qualifies.
            let gt = ConvGeom { n, c_in: cout, h: oh, w: ow, c_out: cin, padding: (2 - ph, 2 - pw), ..g };
            let (gx_want, _) = reference::conv2d_backward_naive(&g, &x, &wt, &gy);
            let (gx_scale, _) = reference::conv2d_backward_naive(&g, &x, &abs(&wt), &abs(&gy));
            let mut gx = vec![f32::NAN; gx_want.len()];
            if applies(&gt) {
                forward(&gt, &f32s(&gy), Filters::Flipped(&f32s(&wt)), None, Epilogue::None, &mut gx);
            } else {
                super::super::backward_input(&g, &f32s(&gy), &f32s(&wt), &mut gx);
            }
            let e = scaled(&gx, &gx_want, &gx_scale);
            prop_assert!(e <= 1e-4, "input gradient: scaled error {e:.3e} for {g:?}");

            let (_, gw_want) = reference::conv2d_backward_naive(&g, &x, &wt, &gy);
            let (_, gw_scale) = reference::conv2d_backward_naive(&g, &abs(&x), &wt, &abs(&gy));
            let mut gw = vec![f32::NAN; gw_want.len()];
            backward_weight(&g, &f32s(&x), &f32s(&gy), &mut gw);
            let e = scaled(&gw, &gw_want, &gw_scale);
            prop_assert!(e <= 1e-4, "weight gradient: scaled error {e:.3e} for {g:?}");
        }
    }
}
