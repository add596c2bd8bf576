//! Winograd F(4×4, 3×3) convolution for 3×3, stride-1, dilation-1, ungrouped convolutions.
//!
//! Lavin & Gray 2016, "Fast Algorithms for Convolutional Neural Networks" (arXiv:1509.09308):
//! each 4×4 output tile is Y = Aᵀ [ (G g Gᵀ) ⊙ (Bᵀ d B) ] A, where g is a 3×3 filter and d the
//! 6×6 input tile (4×4 plus the 2-pixel halo) that produces it. Summed over input channels,
//! the elementwise product becomes 36 independent matrix products, one per transform point ξ:
//!
//!   M_ξ (C_out, tiles) = U_ξ (C_out, C_in) · V_ξ (C_in, tiles)
//!
//! which cost 36 multiply-adds per (C_out, C_in, tile) instead of 16·9 = 144 for the direct
//! (im2col) form: 4× fewer. The transform matrices are the paper's, built on the points
//! 0, ±1, ±2, ±½ and ∞ (§4.2 of the paper): Bᵀ and Aᵀ have small integer entries (0, ±1, ±2,
//! ±4, ±5, ±8), G has 1/4, 1/6, 1/12, 1/24.
//!
//! Data flow: the weight transform U runs once per call, parallel over C_out. Tiles (all images
//! of the batch, in rows of tiles) are processed in blocks sized so that a block's V and M
//! (36·(C_in + C_out)·tiles elements) stay near L2; blocks run in parallel with per-thread
//! scratch, each doing input transform → 36 GEMMs → output transform + bias + scatter.
//! Within a block every transformed quantity is a set of "planes": one value per tile, stored
//! contiguously over the tiles of the block, so the transforms vectorise across tiles.
//!
//! Accuracy: F(4×4, 3×3) rounds more than the direct sum (the transforms mix values with
//! weights up to 8 and 1/24); measured on a realistic f32 layer in the tests below.

use crate::conv::ConvGeom;
use crate::matmul::{gemm_strided, MatRef};
use crate::packed::PackedA;
use crate::Float;
use rayon::prelude::*;
use std::ops::Range;

mod panels;

/// Output tile side (m in F(m×m, r×r)).
const M_T: usize = 4;
/// Input tile side: m + r − 1.
const A_T: usize = 6;
/// Transform points per tile: 6 × 6.
const NXI: usize = A_T * A_T;
/// Tiles handled per vector step of the transforms (one AVX2 register of f32), and the
/// granularity plane lengths are rounded up to.
const LANES: usize = 8;
/// Bytes of V + M a block should occupy: about an L2 cache (transformed tiles written by the
/// input transform are read back by the GEMMs, whose outputs are read by the output transform).
const BLOCK_BYTES: usize = 1 << 20;
/// Fewest tiles per block: below this the 36 GEMMs are too thin to run at full speed, so
/// larger layers accept blocks that spill out of L2 (measured: 256 channels at 14×14 ran
/// 2× slower with the 12-tile blocks the byte budget alone gives; 64 vs 128 vs 256 within noise).
const MIN_TILES: usize = 128;
/// Smallest channel count for which Winograd is used (see [`applies`]).
const MIN_CHANNELS: usize = 16;

/// Fewest tiles (over the whole batch) for which Winograd is used. The weight transform and
/// the U matrices (4× the filter bytes, re-read by every block) are per call, so they must be
/// spread over enough tiles. U lives in a reused per-thread buffer. Measured against im2col +
/// GEMM (2 threads, forward / input gradient): 32 tiles of 256 → 256 channels, 2×14×14
/// 4.6 / 6.2 → 1.8 / 2.3 ms and 8×8×8 3.1 / 4.6 → 1.8 / 2.0 ms; 16 tiles (1×256×14×14) 2.2×
/// slower.
const MIN_BATCH_TILES: usize = 32;
/// Largest U (36·C_in·C_out elements) for which Winograd is used: 4 Mi elements = 16 MiB of
/// f32, unless every tile is whole ([`MAX_U_WHOLE_TILES`]). Past L3, U's transform and reads
/// cost memory bandwidth that 7×7 planes (49 useful pixels of 64 computed) do not repay:
/// 8×512×7×7 forward 10.1 → 11.8 ms.
const MAX_U: usize = 4 << 20;
/// Largest U when the output planes are whole 4×4 tiles. Then im2col + GEMM also computes
/// every zero of the padding (31% of a 4×4 plane's taps): 512 → 512 channels at 32×4×4
/// (a ResNet's last stage on CIFAR) forward 13.9 → 8.5 ms, input gradient 19.4 → 10.4 ms.
const MAX_U_WHOLE_TILES: usize = 16 << 20;
/// Largest U for the weight gradient, whose per-thread partial sums of the 36 products are U-sized
/// and summed at the end: 32×512×4×4 took 19 → 100 ms.
const MAX_U_WEIGHT_GRAD: usize = 4 << 20;
/// Fewest tiles for the weight gradient: its products reduce over the tiles, so few tiles
/// make short products of a large output.
const MIN_BATCH_TILES_WEIGHT_GRAD: usize = 48;

/// Fewest tiles for Winograd when the caller keeps U between calls (inference,
/// [`forward_ep_u`]): without the per-call weight transform, 256 → 256 channels at 1×14×14
/// (16 tiles) ran 1.38 → 0.95 ms against im2col on cnnkit's packed GEMM.
const MIN_BATCH_TILES_KEPT_U: usize = 16;

/// [`applies`] for a caller that keeps U between calls ([`transform_weights`] once, then
/// [`forward_ep_u`]): the same rule with fewer tiles required, and U within
/// [`MAX_U_WHOLE_TILES`] whatever the plane: with U kept (and packed), even 7×7 planes
/// repay it. resnet18 at batch 8, whose 512 → 512 layers (37 MiB of U each) then qualify:
/// 121.7 → 109.0 ms a batch.
pub fn applies_with_kept_u(g: &ConvGeom) -> bool {
    applies_from(g, MIN_BATCH_TILES_KEPT_U, MAX_U_WHOLE_TILES)
}

/// True when `g` is a convolution this module handles and where its forward and input
/// gradient beat im2col + GEMM: 3×3, stride 1, dilation 1, one group, padding ≤ 2, at least
/// [`MIN_CHANNELS`] input and output channels (below that the transforms, not the GEMMs,
/// dominate), at least [`MIN_BATCH_TILES`] 4×4 output tiles over the batch and a U of at
/// most [`MAX_U`] elements ([`MAX_U_WHOLE_TILES`] when the output planes are whole tiles).
pub fn applies(g: &ConvGeom) -> bool {
    let whole = g.out_hw().is_some_and(|(oh, ow)| oh % M_T == 0 && ow % M_T == 0);
    applies_from(g, MIN_BATCH_TILES, if whole { MAX_U_WHOLE_TILES } else { MAX_U })
}

/// [`applies`] for the weight gradient ([`backward_weight`]): more tiles and a smaller U for
/// the tile-split path, or any layer [`applies`] accepts that the output-channel panel path
/// ([`panels`]) takes, whose products need no U-sized partial sums.
pub fn applies_to_weight_grad(g: &ConvGeom) -> bool {
    applies_from(g, MIN_BATCH_TILES_WEIGHT_GRAD, MAX_U_WEIGHT_GRAD) || (applies(g) && panels::applies(g))
}

fn applies_from(g: &ConvGeom, min_tiles: usize, max_u: usize) -> bool {
    let Some((oh, ow)) = g.out_hw() else { return false };
    g.kh == 3
        && g.kw == 3
        && g.stride == (1, 1)
        && g.dilation == (1, 1)
        && g.groups == 1
        && g.padding.0 <= 2
        && g.padding.1 <= 2
        && g.c_in >= MIN_CHANNELS
        && g.c_out >= MIN_CHANNELS
        && g.n * oh.div_ceil(M_T) * ow.div_ceil(M_T) >= min_tiles
        && NXI * g.c_in * g.c_out <= max_u
}

/// y = conv(x, w) + b by Winograd F(4×4, 3×3). x: (N, C_in, H, W); w: (C_out, C_in, 3, 3);
/// b: (C_out); y: (N, C_out, OH, OW) (overwritten). Any geometry with 3×3 kernels, stride 1,
/// dilation 1, groups 1 and padding ≤ 2 is correct here; [`applies`] decides when it is used.
pub fn forward<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, y: &mut [T]) {
    forward_ep(g, x, w, b, crate::conv::Epilogue::None, y)
}

/// [`forward`] with the activation `ep` applied to each output row as it is written.
/// Geometry and slice lengths are checked by [`transform_weights`] and [`forward_ep_u`].
pub fn forward_ep<T: Float>(g: &ConvGeom, x: &[T], w: &[T], b: Option<&[T]>, ep: crate::conv::Epilogue, y: &mut [T]) {
    if panels::applies(g) {
        let f = crate::simd::as_f32;
        if let (Some(x), Some(w), Some(y)) = (f(x), f(w), crate::simd::as_f32_mut(y)) {
            return panels::forward(g, x, panels::Filters::Direct(w), b.and_then(f), ep, y);
        }
    }
    // The transform writes every element of U, so a per-thread buffer with stale contents
    // serves (a fresh zeroed U was ~9% of a 128-channel 28×28 layer at batch 1).
    T::with_aux_scratch(u_len(g), |u| {
        transform_weights(g, w, u);
        forward_ep_u(g, x, u, b, ep, y)
    })
}

/// Elements of the transformed weights U of `g` (C_out · 36 · C_in).
pub fn u_len(g: &ConvGeom) -> usize {
    g.c_out * NXI * g.c_in
}

/// U = G g Gᵀ of the filters w (C_out, C_in, 3, 3) into `u` (at least [`u_len`] elements):
/// what [`forward_ep_u`] takes, for callers that keep it while w is unchanged (inference).
pub fn transform_weights<T: Float>(g: &ConvGeom, w: &[T], u: &mut [T]) {
    assert!(w.len() >= g.c_out * g.c_in * 9 && u.len() >= u_len(g));
    weight_transform(w, g.c_out, g.c_in, u)
}

/// Fewest input and output channels for [`KeptU`] to pack U: at batch 1 (two threads),
/// 256 → 256 at 14×14 ran 1.13 → 0.80 ms packed and 128 → 128 at 28×28 0.64 → 0.58, but
/// 64 → 64 at 56×56 0.78 → 0.83 (K = 64 is short for the packed kernel, 196 tiles long).
const KEPT_PACK_MIN_CHANNELS: usize = 128;

/// Winograd weights kept between calls (inference): U, and on CPUs with AVX-512 each U_ξ
/// packed into output-channel panels for cnnkit's own GEMM ([`crate::packed`]). The 36 GEMMs
/// have one column per tile, and a batch-1 layer has few: 16 at 14×14, where the gemm crate
/// vectorises along tiles and ran them in its narrowest kernel (13% of ResNet-18 at batch 1).
pub struct KeptU {
    /// U (C_out, 36, C_in) when not packed; empty when packed.
    u: Vec<f32>,
    /// U_ξ (C_out, C_in) for ξ = 0..36, packed; empty without AVX-512.
    packed: Vec<PackedA>,
}

impl KeptU {
    /// Transforms (and packs) the f32 filters w (C_out, C_in, 3, 3) of `g`.
    pub fn new(g: &ConvGeom, w: &[f32]) -> KeptU {
        let mut u = vec![0.0f32; u_len(g)];
        transform_weights(g, w, &mut u);
        if !crate::packed::available() || g.c_in < KEPT_PACK_MIN_CHANNELS || g.c_out < KEPT_PACK_MIN_CHANNELS {
            return KeptU { u, packed: Vec::new() };
        }
        let (cin, cout) = (g.c_in, g.c_out);
        let packed = (0..NXI)
            .map(|xi| PackedA::new(MatRef { data: &u[xi * cin..], rows: cout, cols: cin, rs: (NXI * cin) as isize, cs: 1 }))
            .collect();
        KeptU { u: Vec::new(), packed }
    }
    /// Bytes held.
    pub fn bytes(&self) -> usize {
        4 * (self.u.len() + self.packed.iter().map(|p| p.m_padded() * p.k).sum::<usize>())
    }
}

/// [`forward_ep`] with weights kept by [`KeptU::new`] (for the same geometry's C_in, C_out).
pub fn forward_kept(g: &ConvGeom, x: &[f32], ku: &KeptU, b: Option<&[f32]>, ep: crate::conv::Epilogue, y: &mut [f32]) {
    if ku.packed.is_empty() {
        return forward_ep_u(g, x, &ku.u, b, ep, y);
    }
    assert!(ku.packed.len() == NXI && ku.packed[0].m == g.c_out && ku.packed[0].k == g.c_in, "winograd: kept U of another layer");
    forward_impl(g, x, UMats::Packed(&ku.packed), b, ep, y)
}

/// The 36 U_ξ matrices of a forward: views into U, or packed panels (f32 only).
#[derive(Clone, Copy)]
enum UMats<'a, T> {
    Raw(&'a [T]),
    Packed(&'a [PackedA]),
}

/// [`forward_ep`] with the weights given transformed (`u`, from [`transform_weights`]).
pub fn forward_ep_u<T: Float>(g: &ConvGeom, x: &[T], u: &[T], b: Option<&[T]>, ep: crate::conv::Epilogue, y: &mut [T]) {
    assert!(u.len() >= u_len(g));
    forward_impl(g, x, UMats::Raw(u), b, ep, y)
}

fn forward_impl<T: Float>(g: &ConvGeom, x: &[T], um: UMats<T>, b: Option<&[T]>, ep: crate::conv::Epilogue, y: &mut [T]) {
    assert!(
        g.kh == 3 && g.kw == 3 && g.stride == (1, 1) && g.dilation == (1, 1) && g.groups == 1 && g.padding.0 <= 2 && g.padding.1 <= 2,
        "winograd: unsupported geometry {g:?}"
    );
    let (oh, ow) = g.out_hw().expect("ConvGeom checked by caller");
    assert!(x.len() >= g.n * g.c_in * g.h * g.w && y.len() >= g.n * g.c_out * oh * ow);
    if let Some(b) = b {
        assert!(b.len() >= g.c_out);
    }
    let (cin, cout) = (g.c_in, g.c_out);
    let (th, tw) = (oh.div_ceil(M_T), ow.div_ceil(M_T));
    let rows = g.n * th; // rows of tiles over the whole batch
    let threads = crate::num_threads().max(1);

    // Blocks of whole tile rows: about BLOCK_BYTES of V + M, at least one block per thread
    // when there are enough rows, and a multiple of the thread count so threads finish together.
    let per_tile = NXI * (cin + cout) * std::mem::size_of::<T>();
    let target_rows = ((BLOCK_BYTES / per_tile).max(MIN_TILES) / tw).max(1);
    let mut nblk = rows.div_ceil(target_rows);
    nblk = if nblk <= threads { threads.min(rows) } else { nblk.div_ceil(threads) * threads };
    let rpb = rows.div_ceil(nblk.max(1));
    let nblk = rows.div_ceil(rpb);

    let out = OutPtr(y.as_mut_ptr());
    {
        let block = |bi: usize, par: bool| {
            let blk = Block::new(g, rpb, bi, ep);
            let (nb, nbp) = (blk.tiles(), blk.nbp);
            with_block_scratch(&blk, |v, m, t1, t2, pad| {
                input_transform_best(&blk, x, 0..blk.g.c_in, v, t1, t2, pad);
                for xi in 0..NXI {
                    let bm = MatRef { data: &v[xi * cin * nbp..], rows: cin, cols: nb, rs: nbp as isize, cs: 1 };
                    let mx = &mut m[xi * cout * nbp..(xi + 1) * cout * nbp];
                    match um {
                        UMats::Raw(u) => {
                            // U_ξ: (C_out, C_in) inside u's (C_out, 36, C_in) layout.
                            let a = MatRef { data: &u[xi * cin..], rows: cout, cols: cin, rs: (NXI * cin) as isize, cs: 1 };
                            gemm_strided(a, bm, mx, nbp as isize, 1, false, par);
                        }
                        UMats::Packed(pk) => {
                            let (Some(bm), Some(mx)) = (crate::simd::as_f32(bm.data), crate::simd::as_f32_mut(mx)) else {
                                unreachable!("packed U is f32 and so are x and y")
                            };
                            let bm = MatRef { data: bm, rows: cin, cols: nb, rs: nbp as isize, cs: 1 };
                            f32::with_aux_scratch(crate::packed::packed_b_len(cin, nb), |pb| {
                                crate::packed::pack_b(bm, pb);
                                crate::packed::gemm_into(&pk[xi], pb, nb, mx, nbp, par);
                            });
                        }
                    }
                }
                output_transform_best(&blk, m, b, &out, t1, t2);
            });
        };
        if nblk == 1 {
            block(0, true);
        } else {
            (0..nblk).into_par_iter().for_each(|bi| block(bi, false));
        }
    }
}

/// gx = d(conv)/dx · gy for convolutions where [`applies`] holds, by Winograd: the input
/// gradient of a 3×3 stride-1 pad-p convolution is a 3×3 stride-1 pad-(2 − p) convolution of
/// gy with the filters rotated 180° and C_in / C_out swapped.
/// gy: (N, C_out, OH, OW); w: (C_out, C_in, 3, 3); gx: (N, C_in, H, W) (overwritten).
pub fn backward_input<T: Float>(g: &ConvGeom, gy: &[T], w: &[T], gx: &mut [T]) {
    let (oh, ow) = g.out_hw().expect("ConvGeom checked by caller");
    let gt = ConvGeom { n: g.n, c_in: g.c_out, h: oh, w: ow, c_out: g.c_in, padding: (2 - g.padding.0, 2 - g.padding.1), ..*g };
    if panels::applies(&gt) {
        if let (Some(gy), Some(w), Some(gx)) = (crate::simd::as_f32(gy), crate::simd::as_f32(w), crate::simd::as_f32_mut(gx)) {
            return panels::forward(&gt, gy, panels::Filters::Flipped(w), None, crate::conv::Epilogue::None, gx);
        }
    }
    // wt[ci][co][ki][kj] = w[co][ci][2 − ki][2 − kj]: (C_in, C_out, 3, 3).
    let mut wt = vec![T::zero(); g.c_in * g.c_out * 9];
    for (ci, dst) in wt.chunks_exact_mut(g.c_out * 9).enumerate() {
        for (co, f) in dst.chunks_exact_mut(9).enumerate() {
            let src = &w[(co * g.c_in + ci) * 9..][..9];
            for (k, v) in f.iter_mut().enumerate() {
                *v = src[8 - k];
            }
        }
    }
    forward(&gt, gy, &wt, None, gx);
}

/// y's base pointer, shared by the blocks. Each output pixel (n, co, oy, ox) belongs to the
/// one tile row (n, oy / 4) and each tile row to exactly one block, so the row slices that
/// blocks create from it never overlap.
struct OutPtr<T>(*mut T);
// SAFETY: blocks write disjoint parts of y (above); T is Send + Sync.
unsafe impl<T: Float> Sync for OutPtr<T> {}
unsafe impl<T: Float> Send for OutPtr<T> {}

impl<T: Float> OutPtr<T> {
    /// y[off .. off + len] as a mutable slice.
    /// SAFETY: the range lies inside y and no other live slice overlaps it.
    #[inline(always)]
    #[allow(clippy::mut_from_ref)] // deliberate: disjoint slices of y handed to parallel blocks
    unsafe fn slice(&self, off: usize, len: usize) -> &mut [T] {
        std::slice::from_raw_parts_mut(self.0.add(off), len)
    }
}

/// Where six (or four, or three) planes of one transform's inputs or outputs live in a buffer:
/// plane k starts at `off + k·stride`.
#[derive(Clone, Copy)]
struct Pl {
    off: usize,
    stride: usize,
}

#[inline(always)]
fn cst<T: Float>(v: f64) -> T {
    T::from_f64(v).unwrap_or(T::zero())
}

/// Loads `K` planes' lanes l0 .. l0+LANES.
#[inline(always)]
fn load<T: Float, const K: usize>(src: &[T], p: Pl, l0: usize) -> [[T; LANES]; K] {
    let mut d = [[T::zero(); LANES]; K];
    for (k, dk) in d.iter_mut().enumerate() {
        dk.copy_from_slice(&src[p.off + k * p.stride + l0..][..LANES]);
    }
    d
}

#[inline(always)]
fn store<T: Float, const K: usize>(dst: &mut [T], p: Pl, l0: usize, o: &[[T; LANES]; K]) {
    for (k, ok) in o.iter().enumerate() {
        dst[p.off + k * p.stride + l0..][..LANES].copy_from_slice(ok);
    }
}

/// out = Bᵀ·d along one axis, per lane: 6 planes in, 6 planes out, n lanes (a multiple of
/// LANES). Bᵀ of F(4×4, 3×3) (Lavin & Gray 2016, §4.2):
///   [4  0 −5  0 1 0; 0 −4 −4  1 1 0; 0 4 −4 −1 1 0; 0 −2 −1 2 1 0; 0 2 −1 −2 1 0; 0 4 0 −5 0 1]
/// The shared subexpressions (d4 − 4d2, d3 − 4d1, d4 − d2, 2(d3 − d1)) bring it to 14 adds.
#[inline(always)]
fn bt6<T: Float>(src: &[T], sp: Pl, dst: &mut [T], dp: Pl, n: usize) {
    let (two, four, five) = (cst::<T>(2.0), cst::<T>(4.0), cst::<T>(5.0));
    for l0 in (0..n).step_by(LANES) {
        let d: [[T; LANES]; 6] = load(src, sp, l0);
        let mut o = [[T::zero(); LANES]; 6];
        for l in 0..LANES {
            let [d0, d1, d2, d3, d4, d5] = [d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]];
            let t1 = d4 - four * d2;
            let t2 = d3 - four * d1;
            let t3 = d4 - d2;
            let t4 = two * (d3 - d1);
            o[0][l] = four * d0 - five * d2 + d4;
            o[1][l] = t1 + t2;
            o[2][l] = t1 - t2;
            o[3][l] = t3 + t4;
            o[4][l] = t3 - t4;
            o[5][l] = four * d1 - five * d3 + d5;
        }
        store(dst, dp, l0, &o);
    }
}

/// out = Aᵀ·m along one axis, plus `bias`, per lane: 6 planes in, 4 out. Aᵀ (Lavin & Gray 2016):
///   [1 1 1 1 1 0; 0 1 −1 2 −2 0; 0 1 1 4 4 0; 0 1 −1 8 −8 1]
#[inline(always)]
fn at6<T: Float>(src: &[T], sp: Pl, dst: &mut [T], dp: Pl, n: usize, bias: T) {
    let (two, four, eight) = (cst::<T>(2.0), cst::<T>(4.0), cst::<T>(8.0));
    for l0 in (0..n).step_by(LANES) {
        let d: [[T; LANES]; 6] = load(src, sp, l0);
        let mut o = [[T::zero(); LANES]; 4];
        for l in 0..LANES {
            let s12 = d[1][l] + d[2][l];
            let d12 = d[1][l] - d[2][l];
            let s34 = d[3][l] + d[4][l];
            let d34 = d[3][l] - d[4][l];
            o[0][l] = d[0][l] + s12 + s34 + bias;
            o[1][l] = d12 + two * d34 + bias;
            o[2][l] = s12 + four * s34 + bias;
            o[3][l] = d12 + eight * d34 + d[5][l] + bias;
        }
        store(dst, dp, l0, &o);
    }
}

/// out = G·g along one axis, per lane: 3 planes in, 6 out. G (Lavin & Gray 2016):
///   [1/4 0 0; −1/6 −1/6 −1/6; −1/6 1/6 −1/6; 1/24 1/12 1/6; 1/24 −1/12 1/6; 0 0 1]
#[inline(always)]
fn g3<T: Float>(src: &[T], sp: Pl, dst: &mut [T], dp: Pl, n: usize) {
    let (q, s6, s12, s24) = (cst::<T>(0.25), cst::<T>(1.0 / 6.0), cst::<T>(1.0 / 12.0), cst::<T>(1.0 / 24.0));
    for l0 in (0..n).step_by(LANES) {
        let d: [[T; LANES]; 3] = load(src, sp, l0);
        let mut o = [[T::zero(); LANES]; 6];
        for l in 0..LANES {
            let [g0, g1, g2] = [d[0][l], d[1][l], d[2][l]];
            let s = g0 + g2;
            let t = s24 * g0 + s6 * g2;
            o[0][l] = q * g0;
            o[1][l] = -s6 * (s + g1);
            o[2][l] = -s6 * (s - g1);
            o[3][l] = t + s12 * g1;
            o[4][l] = t - s12 * g1;
            o[5][l] = g2;
        }
        store(dst, dp, l0, &o);
    }
}

/// gw = d(conv)/dw · gy summed over the batch, for convolutions where [`applies_to_weight_grad`] holds, by
/// Winograd. The forward tile is Y = Aᵀ [U ⊙ V] A with U = G g Gᵀ, so by the chain rule
/// dL/dU = (A dY Aᵀ) ⊙ V and dL/dg = Gᵀ (dL/dU) G, summed over tiles. Per transform point ξ
/// the sum over tiles is one matrix product:
///
///   M_ξ (C_out, C_in) = Ŷ_ξ (C_out, tiles) · V_ξ (C_in, tiles)ᵀ,   Ŷ = A dY Aᵀ per tile,
///
/// 36 multiply-adds per (C_out, C_in, tile) instead of 144 for im2col + GEMM. Blocks of tile
/// rows are split over the threads, each accumulating its own M; the partial M are summed and
/// gw = Gᵀ M G per filter at the end. Layers with few tiles go by output-channel panels
/// instead ([`panels`], f32 with AVX-512), with no partial sums.
/// x: (N, C_in, H, W); gy: (N, C_out, OH, OW); gw: (C_out, C_in, 3, 3) (overwritten).
pub fn backward_weight<T: Float>(g: &ConvGeom, x: &[T], gy: &[T], gw: &mut [T]) {
    if panels::applies(g) {
        let f = crate::simd::as_f32;
        if let (Some(x), Some(gy), Some(gw)) = (f(x), f(gy), crate::simd::as_f32_mut(gw)) {
            return panels::backward_weight(g, x, gy, gw);
        }
    }
    assert!(
        g.kh == 3 && g.kw == 3 && g.stride == (1, 1) && g.dilation == (1, 1) && g.groups == 1 && g.padding.0 <= 2 && g.padding.1 <= 2,
        "winograd: unsupported geometry {g:?}"
    );
    let (oh, ow) = g.out_hw().expect("ConvGeom checked by caller");
    assert!(x.len() >= g.n * g.c_in * g.h * g.w && gy.len() >= g.n * g.c_out * oh * ow && gw.len() >= g.c_out * g.c_in * 9);
    let (cin, cout) = (g.c_in, g.c_out);
    let (th, tw) = (oh.div_ceil(M_T), ow.div_ceil(M_T));
    let rows = g.n * th;
    let threads = crate::num_threads().max(1);
    let per_tile = NXI * (cin + cout) * std::mem::size_of::<T>();
    let rpb = ((BLOCK_BYTES / per_tile).max(MIN_TILES) / tw).max(1).min(rows.max(1));
    let nblk = rows.div_ceil(rpb);
    // Contiguous runs of blocks, one per thread (fewer when there are fewer blocks).
    let groups = threads.min(nblk).max(1);
    let per_group = nblk.div_ceil(groups);
    let mlen = NXI * cout * cin;
    let partial: Vec<Vec<T>> = (0..groups)
        .into_par_iter()
        .map(|gi| {
            let mut m = vec![T::zero(); mlen];
            let par = groups == 1;
            for bi in gi * per_group..((gi + 1) * per_group).min(nblk) {
                let blk = Block::new(g, rpb, bi, crate::conv::Epilogue::None);
                let (nb, nbp) = (blk.tiles(), blk.nbp);
                with_block_scratch(&blk, |v, yh, t1, t2, pad| {
                    input_transform_best(&blk, x, 0..blk.g.c_in, v, t1, t2, pad);
                    grad_transform_best(&blk, gy, yh, t1, t2);
                    for xi in 0..NXI {
                        let a = MatRef { data: &yh[xi * cout * nbp..], rows: cout, cols: nb, rs: nbp as isize, cs: 1 };
                        let bt = MatRef { data: &v[xi * cin * nbp..], rows: nb, cols: cin, rs: 1, cs: nbp as isize };
                        gemm_strided(a, bt, &mut m[xi * cout * cin..(xi + 1) * cout * cin], cin as isize, 1, true, par);
                    }
                });
            }
            m
        })
        .collect();
    // gw = Gᵀ (Σ partial M) G, per filter; parallel over output channels.
    gw[..cout * cin * 9].par_chunks_mut(cin * 9).enumerate().for_each(|(co, gwc)| weight_grad_filters_best(&partial, co, cout, cin, gwc));
}

best_isa_fn!(weight_grad_filters_best, weight_grad_filters_avx2, weight_grad_filters, (partial: &[Vec<T>], co: usize, cout: usize, cin: usize, gwc: &mut [T]));

/// gwc (C_in, 3, 3) = Gᵀ·M·G for output channel co, M summed over the per-thread partials,
/// LANES input channels at a time (plane ξ of M holds them side by side; a scalar loop over
/// filters was 2% of a resnet18 CIFAR step).
#[inline(always)]
fn weight_grad_filters<T: Float>(partial: &[Vec<T>], co: usize, cout: usize, cin: usize, gwc: &mut [T]) {
    for c0 in (0..cin).step_by(LANES) {
        let nl = LANES.min(cin - c0);
        let mut mm = [[T::zero(); LANES]; NXI];
        for (xi, row) in mm.iter_mut().enumerate() {
            let at = (xi * cout + co) * cin + c0;
            for p in partial {
                row[..nl].iter_mut().zip(&p[at..at + nl]).for_each(|(r, &v)| *r += v);
            }
        }
        // Along b (W) for each a, then along a (H): 6 → 3 each, Gᵀ's rows.
        let mut half = [[T::zero(); LANES]; A_T * 3];
        for a in 0..A_T {
            for l in 0..LANES {
                let o = gt3(&std::array::from_fn::<T, A_T, _>(|b| mm[A_T * a + b][l]));
                (0..3).for_each(|kj| half[3 * a + kj][l] = o[kj]);
            }
        }
        for kj in 0..3 {
            for l in 0..LANES {
                let o = gt3(&std::array::from_fn::<T, A_T, _>(|a| half[3 * a + kj][l]));
                if l < nl {
                    (0..3).for_each(|ki| gwc[(c0 + l) * 9 + 3 * ki + kj] = o[ki]);
                }
            }
        }
    }
}

/// Gᵀ·m along one axis: 6 values in, 3 out. Gᵀ is the transpose of G (see [`g3`]):
///   [1/4 −1/6 −1/6 1/24 1/24 0; 0 −1/6 1/6 1/12 −1/12 0; 0 −1/6 −1/6 1/6 1/6 1]
#[inline(always)]
fn gt3<T: Float>(m: &[T]) -> [T; 3] {
    let (q, s6, s12, s24) = (cst::<T>(0.25), cst::<T>(1.0 / 6.0), cst::<T>(1.0 / 12.0), cst::<T>(1.0 / 24.0));
    let (s12_, d12) = (m[1] + m[2], m[2] - m[1]);
    let (s34, d34) = (m[3] + m[4], m[3] - m[4]);
    [q * m[0] - s6 * s12_ + s24 * s34, s6 * d12 + s12 * d34, s6 * (s34 - s12_) + m[5]]
}

/// out = Gᵀ·m along one axis, per lane ([`gt3`] on planes): 6 planes in, 3 out, n lanes (a
/// multiple of LANES).
#[inline(always)]
fn gt3_planes<T: Float>(src: &[T], sp: Pl, dst: &mut [T], dp: Pl, n: usize) {
    for l0 in (0..n).step_by(LANES) {
        let d: [[T; LANES]; 6] = load(src, sp, l0);
        let mut o = [[T::zero(); LANES]; 3];
        for l in 0..LANES {
            let r = gt3(&[d[0][l], d[1][l], d[2][l], d[3][l], d[4][l], d[5][l]]);
            (0..3).for_each(|k| o[k][l] = r[k]);
        }
        store(dst, dp, l0, &o);
    }
}

/// out = A·gy along one axis, per lane: 4 planes in, 6 out. A is the transpose of Aᵀ (see
/// [`at6`]): rows [1 0 0 0; 1 1 1 1; 1 −1 1 −1; 1 2 4 8; 1 −2 4 −8; 0 0 0 1].
#[inline(always)]
fn a4<T: Float>(src: &[T], sp: Pl, dst: &mut [T], dp: Pl, n: usize) {
    let (two, four, eight) = (cst::<T>(2.0), cst::<T>(4.0), cst::<T>(8.0));
    for l0 in (0..n).step_by(LANES) {
        let d: [[T; LANES]; 4] = load(src, sp, l0);
        let mut o = [[T::zero(); LANES]; 6];
        for l in 0..LANES {
            let [g0, g1, g2, g3] = [d[0][l], d[1][l], d[2][l], d[3][l]];
            let (e, od) = (g0 + g2, g1 + g3);
            let (e4, od2) = (g0 + four * g2, two * g1 + eight * g3);
            o[0][l] = g0;
            o[1][l] = e + od;
            o[2][l] = e - od;
            o[3][l] = e4 + od2;
            o[4][l] = e4 - od2;
            o[5][l] = g3;
        }
        store(dst, dp, l0, &o);
    }
}

/// U = G g Gᵀ for every filter. w: (C_out, C_in, 3, 3); u: (C_out, 36, C_in), ξ = 6a + b
/// (a along H, b along W), so that U_ξ is a (C_out, C_in) matrix with row stride 36·C_in.
/// Parallel over C_out; each output channel's filters are transformed C_in at a time.
fn weight_transform<T: Float>(w: &[T], cout: usize, cin: usize, u: &mut [T]) {
    let cp = cin.div_ceil(LANES) * LANES;
    let per = NXI * cin;
    let chunk = (cout / (4 * crate::num_threads().max(1))).max(1);
    u[..cout * per].par_chunks_mut(chunk * per).enumerate().for_each(|(blk, uc)| {
        // Planes: 9 of the filter taps (k = 3ki + kj), 18 of G·g (3a + kj), 36 of U (6a + b).
        let mut buf = vec![T::zero(); (9 + 18 + 36) * cp];
        crate::simd::with_best_isa(|| {
            for (j, uo) in uc.chunks_mut(per).enumerate() {
                let co = blk * chunk + j;
                let (taps, rest) = buf.split_at_mut(9 * cp);
                let (gg, uu) = rest.split_at_mut(18 * cp);
                for (ci, f) in w[co * cin * 9..(co + 1) * cin * 9].chunks_exact(9).enumerate() {
                    for (k, &v) in f.iter().enumerate() {
                        taps[k * cp + ci] = v;
                    }
                }
                // Along H: for each kj, taps (ki = 0..3) → rows a = 0..6.
                for kj in 0..3 {
                    g3(taps, Pl { off: kj * cp, stride: 3 * cp }, gg, Pl { off: kj * cp, stride: 3 * cp }, cp);
                }
                // Along W: for each a, (kj = 0..3) → b = 0..6.
                for a in 0..A_T {
                    g3(gg, Pl { off: 3 * a * cp, stride: cp }, uu, Pl { off: 6 * a * cp, stride: cp }, cp);
                }
                for (xi, dst) in uo.chunks_exact_mut(cin).enumerate() {
                    dst.copy_from_slice(&uu[xi * cp..xi * cp + cin]);
                }
            }
        });
    });
}

/// One block of tile rows q0..q1 (row q = image q / th, tile row q % th); its tiles are
/// numbered (q − q0)·tw + tx and every plane has nbp ≥ (q1 − q0)·tw lanes.
struct Block<'a> {
    g: &'a ConvGeom,
    oh: usize,
    ow: usize,
    th: usize,
    tw: usize,
    q0: usize,
    q1: usize,
    nbp: usize,
    /// Applied to each output row the output transform writes.
    ep: crate::conv::Epilogue,
}

impl<'a> Block<'a> {
    /// Block `bi` of the tile rows of `g`'s whole batch split into runs of `rpb` (the last run
    /// may be shorter).
    fn new(g: &'a ConvGeom, rpb: usize, bi: usize, ep: crate::conv::Epilogue) -> Self {
        let (oh, ow) = g.out_hw().unwrap_or((0, 0));
        let (th, tw) = (oh.div_ceil(M_T), ow.div_ceil(M_T));
        let q0 = bi * rpb;
        let q1 = (q0 + rpb).min(g.n * th);
        let nbp = ((q1 - q0) * tw).div_ceil(LANES) * LANES;
        Block { g, oh, ow, th, tw, q0, q1, nbp, ep }
    }

    /// Tiles in the block (nbp rounds this up to whole vectors).
    fn tiles(&self) -> usize {
        (self.q1 - self.q0) * self.tw
    }
}

/// Runs `f(v, w, t1, t2, pad)` on this thread's scratch, sized for `blk`: v (36, C_in, nbp) for
/// the transformed input, w (36, C_out, nbp) for the output-side planes (M in the forward, Ŷ in
/// the weight gradient), t1 and t2 (36·nbp each) for the transforms, pad for the input
/// transform's padded rows.
fn with_block_scratch<T: Float, R>(blk: &Block<'_>, f: impl FnOnce(&mut [T], &mut [T], &mut [T], &mut [T], &mut [T]) -> R) -> R {
    let nbp = blk.nbp;
    let (v_len, w_len) = (NXI * blk.g.c_in * nbp, NXI * blk.g.c_out * nbp);
    T::with_scratch(v_len + w_len + 2 * NXI * nbp + A_T * (M_T * blk.tw + 2), |buf| {
        let (v, rest) = buf.split_at_mut(v_len);
        let (w, rest) = rest.split_at_mut(w_len);
        let (t1, rest) = rest.split_at_mut(NXI * nbp);
        let (t2, pad) = rest.split_at_mut(NXI * nbp);
        f(v, w, t1, t2, pad)
    })
}

#[inline(always)]
fn input_transform_of<T: Float>(blk: &Block<'_>, x: &[T], chans: Range<usize>, v: &mut [T], d: &mut [T], h: &mut [T], pad: &mut [T]) {
    blk.input_transform(x, chans, v, d, h, pad)
}
#[inline(always)]
fn output_transform_of<T: Float>(blk: &Block<'_>, m: &[T], b: Option<&[T]>, out: &OutPtr<T>, s: &mut [T], t: &mut [T]) {
    blk.output_transform(m, b, out, s, t)
}
best_isa_fn!(input_transform_best, input_transform_avx2, input_transform_of, (blk: &Block<'_>, x: &[T], chans: Range<usize>, v: &mut [T], d: &mut [T], h: &mut [T], pad: &mut [T]));
best_isa_fn!(output_transform_best, output_transform_avx2, output_transform_of, (blk: &Block<'_>, m: &[T], b: Option<&[T]>, out: &OutPtr<T>, s: &mut [T], t: &mut [T]));

#[inline(always)]
fn grad_transform_of<T: Float>(blk: &Block<'_>, gy: &[T], yh: &mut [T], d: &mut [T], h: &mut [T]) {
    blk.grad_transform(gy, yh, d, h)
}
best_isa_fn!(grad_transform_best, grad_transform_avx2, grad_transform_of, (blk: &Block<'_>, gy: &[T], yh: &mut [T], d: &mut [T], h: &mut [T]));

/// The input transform's gather for one tile row, f32 with AVX-512: plane 6i + j of `d`
/// (nbp floats apart) gets pixel (i, j) of each tile, d[(6i + j)·nbp + base + tx] =
/// pad[i·wp + 4·tx + j] for i, j < 6, tx < tw, wp = 4·tw + 2. Eight tiles per step: columns
/// j < 4 are every fourth float of two vectors (one two-source permute each), columns 4 and 5
/// the same from two vectors four floats on. (Scalar, this was a third of the input
/// transform: six loads, six stores and their addresses per tile per row, and the transform
/// is 11–17% of a resnet18-CIFAR or cifar-cnn training step.) pad: (6, wp).
///
/// # Safety
/// The CPU supports AVX-512F; pad.len() ≥ 6·wp; d holds 35·nbp + base + tw floats.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn tile_columns_avx512(pad: &[f32], tw: usize, d: &mut [f32], nbp: usize, base: usize) {
    use std::arch::x86_64::*;
    let wp = M_T * tw + 2;
    debug_assert!(pad.len() >= A_T * wp && d.len() >= (NXI - 1) * nbp + base + tw);
    // idx[j] lane t < 8 = 4t + j (indices 0..31 span the permute's two sources).
    let idx: [__m512i; 4] = std::array::from_fn(|j| {
        let j = j as i32;
        _mm512_setr_epi32(j, 4 + j, 8 + j, 12 + j, 16 + j, 20 + j, 24 + j, 28 + j, 0, 0, 0, 0, 0, 0, 0, 0)
    });
    let dst = d.as_mut_ptr();
    for tx0 in (0..tw).step_by(8) {
        let store: __mmask16 = ((1u32 << (tw - tx0).min(8)) - 1) as __mmask16;
        let at = M_T * tx0;
        // Masks of the four loads (floats at, at + 16, at + 4, at + 20 of a row), zero past its end.
        let m = [0, 16, M_T, M_T + 16].map(|o| crate::simd::lane_mask((at + o) as isize, wp));
        for i in 0..A_T {
            let row = pad.as_ptr().add(i * wp + at);
            // SAFETY (loads): masked-off lanes are not read; the others lie in row i of pad.
            let ld = |k: usize, o: usize| _mm512_maskz_loadu_ps(m[k], row.wrapping_add(o));
            let (a0, a1, b0, b1) = (ld(0, 0), ld(1, 16), ld(2, M_T), ld(3, M_T + 16));
            let plane = dst.add(A_T * i * nbp + base + tx0);
            // SAFETY (stores): planes 6i .. 6i + 5, tiles base + tx0 .. + 8 (masked to tw).
            for (j, ix) in idx.iter().enumerate() {
                _mm512_mask_storeu_ps(plane.add(j * nbp), store, _mm512_permutex2var_ps(a0, *ix, a1));
            }
            _mm512_mask_storeu_ps(plane.add(M_T * nbp), store, _mm512_permutex2var_ps(b0, idx[0], b1));
            _mm512_mask_storeu_ps(plane.add((M_T + 1) * nbp), store, _mm512_permutex2var_ps(b0, idx[1], b1));
        }
    }
}

impl Block<'_> {
    /// V = Bᵀ d B for input channels `chans` and every tile of the block. x: (N, C_in, H, W);
    /// v: (36, chans.len(), nbp); d, h: 36·nbp scratch each; pad: 6·(4·tw + 2) scratch.
    #[inline(always)]
    fn input_transform<T: Float>(&self, x: &[T], chans: Range<usize>, v: &mut [T], d: &mut [T], h: &mut [T], pad: &mut [T]) {
        let g = self.g;
        let (nbp, tw) = (self.nbp, self.tw);
        let ph = g.padding.0 as isize;
        let pw = g.padding.1;
        let hw = g.h * g.w;
        // A padded row covers input columns −pw .. 4·tw + 2 − pw: every tile's 6 columns.
        let wp = M_T * tw + 2;
        // Image columns that land inside the padded row. The columns outside pw .. pw + copy
        // are padding in every row and never written below: zeroed once here rather than per
        // row (two memset calls per row for a zero or two).
        let copy = g.w.min(wp - pw);
        pad[..A_T * wp].fill(T::zero());
        let nc = chans.len();
        for c in chans.clone() {
            // d: plane 6i + j holds input pixel (i, j) of every tile (zero outside the image).
            for q in self.q0..self.q1 {
                let (img, ty) = (q / self.th, q % self.th);
                let base = (q - self.q0) * tw;
                let xp = &x[(img * g.c_in + c) * hw..][..hw];
                // Copy the tile row's 6 input rows into zero-padded rows (a few memcpys), so the
                // gather below needs no bounds tests.
                for (i, pr) in pad.chunks_exact_mut(wp).take(A_T).enumerate() {
                    let iy = (M_T * ty + i) as isize - ph;
                    let mid = &mut pr[pw..pw + copy];
                    if iy >= 0 && (iy as usize) < g.h {
                        crate::conv::copy_row(mid, &xp[iy as usize * g.w..][..copy]);
                    } else {
                        mid.fill(T::zero());
                    }
                }
                #[cfg(target_arch = "x86_64")]
                if let (true, Some(pad), Some(d)) = (crate::packed::available(), crate::simd::as_f32(pad), crate::simd::as_f32_mut(d)) {
                    // SAFETY: AVX-512F was checked; pad holds the six padded rows of 4·tw + 2
                    // floats and d the 36 planes, nbp apart, each with tiles base .. base + tw.
                    unsafe { tile_columns_avx512(pad, tw, d, nbp, base) };
                    continue;
                }
                for (i, pr) in pad.chunks_exact(wp).take(A_T).enumerate() {
                    let planes = &mut d[A_T * i * nbp..(A_T * i + A_T) * nbp];
                    let (p0, rest) = planes.split_at_mut(nbp);
                    let (p1, rest) = rest.split_at_mut(nbp);
                    let (p2, rest) = rest.split_at_mut(nbp);
                    let (p3, rest) = rest.split_at_mut(nbp);
                    let (p4, p5) = rest.split_at_mut(nbp);
                    let (p0, p1, p2) = (&mut p0[base..base + tw], &mut p1[base..base + tw], &mut p2[base..base + tw]);
                    let (p3, p4, p5) = (&mut p3[base..base + tw], &mut p4[base..base + tw], &mut p5[base..base + tw]);
                    for tx in 0..tw {
                        let s = &pr[M_T * tx..M_T * tx + A_T];
                        p0[tx] = s[0];
                        p1[tx] = s[1];
                        p2[tx] = s[2];
                        p3[tx] = s[3];
                        p4[tx] = s[4];
                        p5[tx] = s[5];
                    }
                }
            }
            // Along W: h plane 6i + k = Σ_j d(i, j) B[j][k].
            for i in 0..A_T {
                bt6(d, Pl { off: A_T * i * nbp, stride: nbp }, h, Pl { off: A_T * i * nbp, stride: nbp }, nbp);
            }
            // Along H: V[6a + k][c] = Σ_i Bᵀ[a][i] h(i, k).
            for k in 0..A_T {
                bt6(
                    h,
                    Pl { off: k * nbp, stride: A_T * nbp },
                    v,
                    Pl { off: (k * nc + c - chans.start) * nbp, stride: A_T * nc * nbp },
                    nbp,
                );
            }
        }
    }

    /// Ŷ = A dY Aᵀ for every output channel and tile of the block (dY zero outside the
    /// output). gy: (N, C_out, OH, OW); yh: (36, C_out, nbp); d: 16·nbp and h: 24·nbp scratch.
    #[inline(always)]
    fn grad_transform<T: Float>(&self, gy: &[T], yh: &mut [T], d: &mut [T], h: &mut [T]) {
        let g = self.g;
        let (nbp, tw) = (self.nbp, self.tw);
        let (oh, ow) = (self.oh, self.ow);
        let full = ow / M_T;
        for co in 0..g.c_out {
            // d: plane 4r + c holds gy pixel (r, c) of every tile.
            d[..M_T * M_T * nbp].fill(T::zero());
            for q in self.q0..self.q1 {
                let (img, ty) = (q / self.th, q % self.th);
                let base = (q - self.q0) * tw;
                for r in 0..M_T.min(oh - M_T * ty) {
                    let oy = M_T * ty + r;
                    let src = &gy[((img * g.c_out + co) * oh + oy) * ow..][..ow];
                    for (tx, s) in src.chunks_exact(M_T).enumerate().take(full) {
                        for (c, &v) in s.iter().enumerate() {
                            d[(M_T * r + c) * nbp + base + tx] = v;
                        }
                    }
                    for (k, &v) in src.iter().enumerate().skip(full * M_T) {
                        d[(M_T * r + k % M_T) * nbp + base + k / M_T] = v;
                    }
                }
            }
            // Along W: h plane 6r + b = Σ_c A[b][c] d(r, c).
            for r in 0..M_T {
                a4(d, Pl { off: M_T * r * nbp, stride: nbp }, h, Pl { off: A_T * r * nbp, stride: nbp }, nbp);
            }
            // Along H: Ŷ[6a + b][co] = Σ_r A[a][r] h(r, b).
            for b in 0..A_T {
                a4(h, Pl { off: b * nbp, stride: A_T * nbp }, yh, Pl { off: (b * g.c_out + co) * nbp, stride: A_T * g.c_out * nbp }, nbp);
            }
        }
    }

    /// Y = Aᵀ M A + b for every output channel and tile of the block, written into y.
    /// m: (36, C_out, nbp); s, t: 36·nbp scratch each; y: (N, C_out, OH, OW) behind `out`.
    /// `out` must point at y of that shape (see [`OutPtr`] for why blocks never overlap).
    #[inline(always)]
    fn output_transform<T: Float>(&self, m: &[T], b: Option<&[T]>, out: &OutPtr<T>, s: &mut [T], t: &mut [T]) {
        let g = self.g;
        let nbp = self.nbp;
        let (oh, ow, tw) = (self.oh, self.ow, self.tw);
        let full = ow / M_T; // tiles whose 4 columns are all inside the output
        for co in 0..g.c_out {
            let bias = b.map_or(T::zero(), |b| b[co]);
            // Along H: s plane 6r + bcol = Σ_a Aᵀ[r][a] M(a, bcol).
            for bc in 0..A_T {
                at6(
                    m,
                    Pl { off: (bc * g.c_out + co) * nbp, stride: A_T * g.c_out * nbp },
                    s,
                    Pl { off: bc * nbp, stride: A_T * nbp },
                    nbp,
                    T::zero(),
                );
            }
            // Along W: t plane 4r + sc = Σ_b s(r, b) A[b][sc] + bias.
            for r in 0..M_T {
                at6(s, Pl { off: A_T * r * nbp, stride: nbp }, t, Pl { off: M_T * r * nbp, stride: nbp }, nbp, bias);
            }
            for q in self.q0..self.q1 {
                let (img, ty) = (q / self.th, q % self.th);
                let base = (q - self.q0) * tw;
                for r in 0..M_T.min(oh - M_T * ty) {
                    let oy = M_T * ty + r;
                    // SAFETY: row oy of plane (img, co) is inside y and belongs to this block.
                    let dst = unsafe { out.slice(((img * g.c_out + co) * oh + oy) * ow, ow) };
                    let p = |sc: usize| &t[(M_T * r + sc) * nbp + base..][..tw];
                    let (p0, p1, p2, p3) = (p(0), p(1), p(2), p(3));
                    for (tx, o) in dst.chunks_exact_mut(M_T).enumerate().take(full) {
                        o.copy_from_slice(&[p0[tx], p1[tx], p2[tx], p3[tx]]);
                    }
                    for (k, o) in dst.iter_mut().enumerate().skip(full * M_T) {
                        *o = t[(M_T * r + k % M_T) * nbp + base + k / M_T];
                    }
                    self.ep.apply(dst);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference;
    use proptest::prelude::*;

    fn lcg(seed: &mut u64) -> f64 {
        *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((*seed >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn uniform(n: usize, seed: &mut u64) -> Vec<f64> {
        (0..n).map(|_| lcg(seed) - 0.5).collect()
    }

    /// Standard normal samples (Box–Muller).
    fn normal(n: usize, std: f64, seed: &mut u64) -> Vec<f64> {
        (0..n).map(|_| std * (-2.0 * lcg(seed).ln()).sqrt() * (std::f64::consts::TAU * lcg(seed)).cos()).collect()
    }

    fn to_f32(v: &[f64]) -> Vec<f32> {
        v.iter().map(|&a| a as f32).collect()
    }

    fn geom(n: usize, cin: usize, cout: usize, h: usize, w: usize, p: (usize, usize)) -> ConvGeom {
        ConvGeom { n, c_in: cin, h, w, c_out: cout, kh: 3, kw: 3, stride: (1, 1), padding: p, dilation: (1, 1), groups: 1 }
    }

    /// Largest |a − b| / S, where S = max over the output of Σ|x|·|w| + |b| (the direct sum's
    /// magnitude, computed by the naive kernel on absolute values).
    fn scaled_err(g: &ConvGeom, x: &[f64], w: &[f64], b: Option<&[f64]>, got: &[f64]) -> f64 {
        let want = reference::conv2d_naive(g, x, w, b);
        let ax: Vec<f64> = x.iter().map(|v| v.abs()).collect();
        let aw: Vec<f64> = w.iter().map(|v| v.abs()).collect();
        let ab: Option<Vec<f64>> = b.map(|b| b.iter().map(|v| v.abs()).collect());
        let scale = reference::conv2d_naive(g, &ax, &aw, ab.as_deref()).into_iter().fold(f64::MIN_POSITIVE, f64::max);
        reference::max_abs_diff(got, &want) / scale
    }

    /// Largest error of the f32 Winograd result relative to the f64 direct result's scale.
    fn run_f32(g: &ConvGeom, x: &[f64], w: &[f64], b: Option<&[f64]>) -> f64 {
        let (oh, ow) = g.out_hw().unwrap();
        let mut y = vec![f32::NAN; g.n * g.c_out * oh * ow];
        let b32 = b.map(to_f32);
        forward(g, &to_f32(x), &to_f32(w), b32.as_deref(), &mut y);
        let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
        scaled_err(g, x, w, b, &y64)
    }

    /// U kept between calls (inference): transform once, run twice, with the same result as
    /// the per-call transform, bit for bit, and stale contents in the reused U buffer.
    #[test]
    fn kept_u_matches_per_call_transform() {
        let g = geom(1, 24, 40, 14, 14, (1, 1));
        assert!(applies_with_kept_u(&g) && !applies(&g), "16 tiles: kept U only");
        let mut s = 5;
        let (x, w, b) = (to_f32(&uniform(24 * 14 * 14, &mut s)), to_f32(&uniform(40 * 24 * 9, &mut s)), to_f32(&uniform(40, &mut s)));
        let mut want = vec![f32::NAN; 40 * 14 * 14];
        forward_ep(&g, &x, &w, Some(&b), crate::conv::Epilogue::Relu, &mut want);
        let mut u = vec![f32::NAN; u_len(&g)];
        transform_weights(&g, &w, &mut u);
        for _ in 0..2 {
            let mut y = vec![f32::NAN; want.len()];
            forward_ep_u(&g, &x, &u, Some(&b), crate::conv::Epilogue::Relu, &mut y);
            assert_eq!(y, want);
        }
        let x64: Vec<f64> = x.iter().map(|&v| v as f64).collect();
        let (w64, b64): (Vec<f64>, Vec<f64>) = (w.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
        let relu: Vec<f64> = reference::conv2d_naive(&g, &x64, &w64, Some(&b64)).into_iter().map(|v| v.max(0.0)).collect();
        assert!(reference::max_abs_diff(&want, &relu) < 1e-3);
    }

    /// Kept U in packed panels (AVX-512, ≥ 128 channels): against the naive convolution at
    /// the usual Winograd tolerance, with a partial channel panel (136 = 4·32 + 8), partial
    /// tiles and tile counts on both sides of a 14-column GEMM panel.
    #[test]
    fn kept_packed_u_matches_naive() {
        for (n, h, w) in [(1, 14, 14), (1, 9, 23), (2, 7, 7)] {
            let g = geom(n, 128, 136, h, w, (1, 1));
            let mut s = 11;
            let (x, wt, b) = (uniform(n * 128 * h * w, &mut s), uniform(136 * 128 * 9, &mut s), uniform(136, &mut s));
            let ku = KeptU::new(&g, &to_f32(&wt));
            assert_eq!(ku.packed.is_empty(), !crate::packed::available());
            let (oh, ow) = g.out_hw().unwrap();
            let mut y = vec![f32::NAN; n * 136 * oh * ow];
            forward_kept(&g, &to_f32(&x), &ku, Some(&to_f32(&b)), crate::conv::Epilogue::None, &mut y);
            let y64: Vec<f64> = y.iter().map(|&v| v as f64).collect();
            let e = scaled_err(&g, &x, &wt, Some(&b), &y64);
            assert!(e <= 1e-4, "scaled error {e:.3e} for {g:?}");
        }
    }

    #[test]
    fn f64_matches_naive_closely() {
        // In f64 the transforms' rounding is ~1e-16 relative: any real bug shows as O(1).
        let g = geom(2, 5, 7, 13, 10, (1, 2));
        let mut s = 3;
        let (x, w, b) = (uniform(2 * 5 * 13 * 10, &mut s), uniform(7 * 5 * 9, &mut s), uniform(7, &mut s));
        let (oh, ow) = g.out_hw().unwrap();
        let mut y = vec![f64::NAN; 2 * 7 * oh * ow];
        forward(&g, &x, &w, Some(&b), &mut y);
        assert!(scaled_err(&g, &x, &w, Some(&b), &y) < 1e-13);
    }

    /// A realistic ResNet layer: 64 → 64, 56×56, pad 1, N(0, 1) input, Kaiming-normal weights
    /// (std √(2 / fan_in)), zero bias. Compares f32 Winograd and f32 im2col + GEMM with the
    /// f64 direct result; the error is reported relative to the output's RMS and its max.
    #[test]
    fn realistic_layer_accuracy() {
        let g = geom(1, 64, 64, 56, 56, (1, 1));
        let mut s = 11;
        let x = normal(64 * 56 * 56, 1.0, &mut s);
        let w = normal(64 * 64 * 9, (2.0f64 / 576.0).sqrt(), &mut s);
        let want = crate::reference::conv2d_naive(&g, &x, &w, None);
        let rms = (want.iter().map(|v| v * v).sum::<f64>() / want.len() as f64).sqrt();
        let ymax = want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut yw = vec![0.0f32; want.len()];
        forward(&g, &to_f32(&x), &to_f32(&w), None, &mut yw);
        // The f32 im2col + GEMM path (conv2d_forward itself would dispatch to Winograd here).
        let mut cols = vec![0.0f32; g.col_rows() * 56 * 56];
        crate::conv::im2col(&g, &to_f32(&x), &mut cols);
        let mut yd = vec![0.0f32; want.len()];
        let w32 = to_f32(&w);
        crate::matmul::gemm(MatRef::row_major(&w32, 64, 576), MatRef::row_major(&cols, 576, 56 * 56), &mut yd, false, true);
        let err = |y: &[f32]| reference::max_abs_diff(y, &want);
        let (ew, ed) = (err(&yw), err(&yd));
        eprintln!(
            "realistic 64→64 56×56: output rms {rms:.3}, max {ymax:.3}; max |err| winograd {ew:.3e} ({:.2e} of rms, {:.2e} of max), \
             f32 direct path {ed:.3e} ({:.2e} of rms)",
            ew / rms,
            ew / ymax,
            ed / rms
        );
        // Measured: 6.1e-5 absolute = 9.1e-6 of max |y| (4.4e-5 of the rms), 16× the f32
        // direct path's 3.8e-6. The bound leaves room for other seeds and summation orders.
        assert!(ew / ymax <= 1.5e-5, "winograd error {:.3e} of the output max", ew / ymax);
    }

    /// A ResNet's last stage on CIFAR (512 → 512 at 4×4, whole tiles): the dispatching
    /// forward and input gradient take Winograd (the tile-split path with its 37 MiB U, called
    /// directly here); the weight gradient takes Winograd only by output-channel panels
    /// (AVX-512), im2col otherwise. N(0, 1) input and gradient, Kaiming-normal weights; errors
    /// relative to the f64 direct result's max.
    #[test]
    fn wide_whole_tile_layer_accuracy() {
        let g = geom(2, 512, 512, 4, 4, (1, 1));
        let g32 = ConvGeom { n: 32, ..g };
        assert!(applies(&g32) && applies_to_weight_grad(&g32) == crate::packed::available(), "the rule for the measured layer");
        // Two images are below the tile count; the kernels are called directly.
        let mut s = 13;
        let x = normal(2 * 512 * 16, 1.0, &mut s);
        let w = normal(512 * 512 * 9, (2.0f64 / 4608.0).sqrt(), &mut s);
        let gy = normal(2 * 512 * 16, 1.0, &mut s);
        let want = reference::conv2d_naive(&g, &x, &w, None);
        let (gx_want, _) = reference::conv2d_backward_naive(&g, &x, &w, &gy);
        let rel = |got: &[f32], want: &[f64]| reference::max_abs_diff(got, want) / want.iter().fold(0.0f64, |m, v| m.max(v.abs()));
        let mut y = vec![f32::NAN; want.len()];
        forward(&g, &to_f32(&x), &to_f32(&w), None, &mut y);
        let mut gx = vec![f32::NAN; gx_want.len()];
        backward_input(&g, &to_f32(&gy), &to_f32(&w), &mut gx);
        let mut yd = vec![f32::NAN; want.len()];
        crate::conv::conv2d_forward(&g, &to_f32(&x), &to_f32(&w), None, &mut yd);
        let (ey, ex, ed) = (rel(&y, &want), rel(&gx, &gx_want), rel(&yd, &want));
        eprintln!("512→512 4×4: errors of the max: winograd forward {ey:.2e}, input gradient {ex:.2e}; f32 im2col forward {ed:.2e}");
        // Measured: 1.5e-5 and 1.6e-5 (the f32 im2col path: 4.9e-7). Error grows with C_in; the
        // bound is twice the measurement.
        assert!(ey <= 3e-5 && ex <= 3e-5, "errors of the max: forward {ey:.2e}, input gradient {ex:.2e}");
    }

    #[test]
    fn backward_input_matches_naive() {
        for &(p, h, w) in &[(0usize, 9usize, 7usize), (1, 10, 13), (2, 6, 5)] {
            let g = geom(2, 17, 18, h, w, (p, p));
            let (oh, ow) = g.out_hw().unwrap();
            let mut s = 7 + p as u64;
            let (x, wt, gy) = (uniform(2 * 17 * h * w, &mut s), uniform(18 * 17 * 9, &mut s), uniform(2 * 18 * oh * ow, &mut s));
            let (want, _) = reference::conv2d_backward_naive(&g, &x, &wt, &gy);
            let mut gx = vec![f64::NAN; x.len()];
            backward_input(&g, &gy, &wt, &mut gx);
            let e = reference::max_abs_diff(&gx, &want);
            assert!(e < 1e-12, "pad {p}: {e}");
        }
    }

    /// The weight gradient in f64: exact up to rounding for every padding, partial tiles and
    /// several blocks and threads' partial sums (a 2×17×18 layer at 37×29 has 160 tiles).
    #[test]
    fn backward_weight_matches_naive() {
        for &(n, p, h, w) in &[(2usize, 0usize, 9usize, 7usize), (2, 1, 10, 13), (1, 2, 6, 5), (3, 1, 37, 29)] {
            let g = geom(n, 17, 18, h, w, (p, p));
            let (oh, ow) = g.out_hw().unwrap();
            let mut s = 5 + p as u64;
            let (x, wt, gy) = (uniform(n * 17 * h * w, &mut s), uniform(18 * 17 * 9, &mut s), uniform(n * 18 * oh * ow, &mut s));
            let (_, want) = reference::conv2d_backward_naive(&g, &x, &wt, &gy);
            let mut gw = vec![f64::NAN; wt.len()];
            backward_weight(&g, &x, &gy, &mut gw);
            let e = reference::max_abs_diff(&gw, &want);
            assert!(e < 1e-11, "n {n} pad {p} {h}×{w}: {e}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(32))]
        /// f32 Winograd weight gradient vs the f64 naive one on random shapes. Tolerance as
        /// for the forward below, relative to the largest Σ|gy|·|x| over the filter taps.
        #[test]
        fn backward_weight_f32_matches_naive(n in 1usize..4, cin in 1usize..21, cout in 1usize..21, h in 1usize..25,
                                             w in 1usize..25, p in 0usize..3, seed in 0u64..10_000) {
            let g = geom(n, cin, cout, h, w, (p, p));
            prop_assume!(g.out_hw().is_some());
            let e = weight_grad_f32_error(&g, seed);
            prop_assert!(e <= 1e-4, "scaled error {e:.3e} for {g:?}");
        }

        /// Wide rows (several eight-tile steps of the gradient's AVX-512 gather, the last one
        /// partial, and rows whose width is not a multiple of 4).
        #[test]
        fn backward_weight_wide_rows_match_naive(n in 1usize..3, cin in 1usize..6, cout in 1usize..6, h in 1usize..8,
                                                 w in 30usize..90, p in 0usize..3, seed in 0u64..10_000) {
            let g = geom(n, cin, cout, h, w, (p, p));
            prop_assume!(g.out_hw().is_some());
            let e = weight_grad_f32_error(&g, seed);
            prop_assert!(e <= 1e-4, "scaled error {e:.3e} for {g:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// f32 Winograd vs the f64 naive convolution on random shapes, including partial tiles,
        /// padding 0–2 and tiny images. Tolerance: 1e-4 · max(Σ|x||w| + |b|), the largest
        /// magnitude the direct sum reaches. Rationale: f32 carries 6e-8 relative error per
        /// operation; the transforms amplify it by at most the product of the transform
        /// matrices' absolute row sums (Bᵀ ≤ 10 per axis, Aᵀ ≤ 19, G ≤ 1/2) and the GEMM adds
        /// √(9·C_in)-ish accumulation error, so errors stay well below 1e-4 of the scale, while
        /// any indexing or transform bug gives errors of order the scale itself.
        #[test]
        fn f32_matches_naive(n in 1usize..4, cin in 1usize..41, cout in 1usize..41, h in 1usize..31, w in 1usize..31,
                             ph in 0usize..3, pw in 0usize..3, bias: bool, seed in 0u64..10_000) {
            let g = geom(n, cin, cout, h, w, (ph, pw));
            prop_assume!(g.out_hw().is_some());
            let e = random_f32_error(&g, bias, seed);
            prop_assert!(e <= 1e-4, "scaled error {e:.3e} for {g:?}");
        }

        /// Wide rows: more than 16 tiles per tile row, so the AVX-512 gather of the input
        /// transform takes several steps, the last one partial.
        #[test]
        fn f32_wide_rows_match_naive(n in 1usize..3, cin in 1usize..5, cout in 1usize..5, h in 1usize..10, w in 60usize..140,
                                     ph in 0usize..3, pw in 0usize..3, seed in 0u64..10_000) {
            let g = geom(n, cin, cout, h, w, (ph, pw));
            prop_assume!(g.out_hw().is_some());
            let e = random_f32_error(&g, true, seed);
            prop_assert!(e <= 1e-4, "scaled error {e:.3e} for {g:?}");
        }
    }

    /// The f32 weight gradient's largest error against the f64 naive one on uniform random
    /// input and output gradient from `seed`, relative to the largest Σ|gy|·|x| over a
    /// filter's taps.
    fn weight_grad_f32_error(g: &ConvGeom, seed: u64) -> f64 {
        let (oh, ow) = g.out_hw().unwrap();
        let mut s = seed;
        let x = uniform(g.n * g.c_in * g.h * g.w, &mut s);
        let wt = uniform(g.c_out * g.c_in * 9, &mut s);
        let gy = uniform(g.n * g.c_out * oh * ow, &mut s);
        let (_, want) = reference::conv2d_backward_naive(g, &x, &wt, &gy);
        let abs = |v: &[f64]| -> Vec<f64> { v.iter().map(|a| a.abs()).collect() };
        let (_, scale) = reference::conv2d_backward_naive(g, &abs(&x), &wt, &abs(&gy));
        let scale = scale.iter().fold(f64::MIN_POSITIVE, |m, v| m.max(v.abs()));
        let mut gw = vec![f32::NAN; wt.len()];
        backward_weight(g, &to_f32(&x), &to_f32(&gy), &mut gw);
        reference::max_abs_diff(&gw, &want) / scale
    }

    /// [`run_f32`] on uniform random input, weights and (when `bias`) bias from `seed`.
    fn random_f32_error(g: &ConvGeom, bias: bool, seed: u64) -> f64 {
        let mut s = seed;
        let x = uniform(g.n * g.c_in * g.h * g.w, &mut s);
        let wt = uniform(g.c_out * g.c_in * 9, &mut s);
        let b = uniform(g.c_out, &mut s);
        run_f32(g, &x, &wt, bias.then_some(&b[..]))
    }
}
