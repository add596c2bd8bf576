//! cnnkit's own f32 GEMM for convolutions on small planes (AVX-512).
//!
//! The `gemm` crate vectorises along C's contiguous dimension, which in a convolution is the
//! output pixels. A 7×7 plane (49 pixels) then fills four 16-lane vectors with 49 lanes of
//! work, and a 14×14 plane leaves a 4-pixel edge for a narrow kernel: measured 81–86 GFLOP/s
//! per thread at 49 pixels against 113 at 48 or 64. Output channels, by contrast, are
//! multiples of 16 or 32 in the networks that matter (panels pad other counts with zero rows).
//! This GEMM vectorises along them:
//!
//!   Cᵀ (N, M) = (A (M, K) · B (K, N))ᵀ
//!
//! with A (the weights) packed into panels of [`MR`] rows, B (im2col columns) packed into
//! panels of [`NR`] columns, and a microkernel that holds an MR × NR tile of C in 28 zmm
//! registers: per k, two loads of A and NR broadcasts of B feed 2·NR FMAs (111 GFLOP/s per
//! thread at 512×2304×49). [`gemm_bias_act`] transposes each panel's Cᵀ into the NCHW output
//! while it adds bias and activation. Packing A reads the weights by columns, which costs
//! more than the GEMM saves, so the path is for weights packed once and kept: inference,
//! through the cache in `cnnkit_core::prepared`. A 1×1 convolution's B is its input, which
//! [`gemm_bias_act_b_in_place`] reads where it lies (the microkernel takes B's row stride).

use crate::conv::{Epilogue, SyncPtr};
use crate::matmul::MatRef;
use rayon::prelude::*;

/// Rows of A (output channels) per panel: two 16-lane vectors.
pub const MR: usize = 32;
/// Columns of B (output pixels) per panel; 2·NR accumulators + 2 A vectors fit 32 registers.
pub const NR: usize = 14;

/// A (M, K) packed for [`panel_product`]: panel p holds rows p·MR .. p·MR + MR (zero past M), stored
/// k-major: panel[k·MR + r] = A[p·MR + r, k].
#[derive(Clone, Debug)]
pub struct PackedA {
    pub m: usize,
    pub k: usize,
    data: Vec<f32>,
}

impl PackedA {
    /// Packs `a` (M, K), any strides.
    pub fn new(a: MatRef<f32>) -> PackedA {
        let (m, k) = (a.rows, a.cols);
        let mut data = vec![0.0f32; m.div_ceil(MR) * k * MR];
        for (p, panel) in data.chunks_exact_mut((k * MR).max(1)).enumerate() {
            pack_a_panel(a, p, panel);
        }
        PackedA { m, k, data }
    }
    /// M rounded up to whole panels: the rows the packed copy holds.
    pub fn m_padded(&self) -> usize {
        self.m.div_ceil(MR) * MR
    }
    fn panels(&self) -> usize {
        self.m.div_ceil(MR)
    }
    fn panel(&self, p: usize) -> &[f32] {
        &self.data[p * self.k * MR..(p + 1) * self.k * MR]
    }
}

/// Packs rows p·MR .. p·MR + MR of `a` (M, K) into `out` (K·MR, k-major; zero past M).
pub fn pack_a_panel(a: MatRef<f32>, p: usize, out: &mut [f32]) {
    let (m, k) = (a.rows, a.cols);
    let rows = MR.min(m - p * MR);
    let out = &mut out[..k * MR];
    if a.cs != 1 {
        for (kk, dst) in out.chunks_exact_mut(MR).enumerate() {
            for (r, d) in dst.iter_mut().enumerate() {
                *d = if r < rows { a.data[((p * MR + r) as isize * a.rs + kk as isize * a.cs) as usize] } else { 0.0 };
            }
        }
        return;
    }
    // Row-major A: a 16-column strip of the panel's rows (one cache line each) at a time, so
    // reads are whole lines and writes stay in a 2 KiB block (column-at-a-time packing read
    // 32 rows 18 KiB apart per k and was half the time of a 512-channel 7×7 layer).
    const KB: usize = 16;
    let row = |r: usize| &a.data[((p * MR + r) as isize * a.rs) as usize..][..k];
    for k0 in (0..k).step_by(KB) {
        let kb = KB.min(k - k0);
        let blk = &mut out[k0 * MR..(k0 + kb) * MR];
        for r in 0..MR {
            if r < rows {
                for (i, &v) in row(r)[k0..k0 + kb].iter().enumerate() {
                    blk[i * MR + r] = v;
                }
            } else {
                for i in 0..kb {
                    blk[i * MR + r] = 0.0;
                }
            }
        }
    }
}

/// True where [`panel_product`] runs its AVX-512 microkernel (checked once); elsewhere callers keep
/// to the `gemm` crate.
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::sync::OnceLock;
        static HAS: OnceLock<bool> = OnceLock::new();
        *HAS.get_or_init(|| is_x86_feature_detected!("avx512f"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Length of the buffer [`pack_b`] fills for B (K, N).
pub fn packed_b_len(k: usize, n: usize) -> usize {
    k * n.div_ceil(NR) * NR
}

/// Packs B (K, N) into panels of NR columns: panel j at j·K·NR, stored k-major with the
/// panel's width as row length (the last panel may be narrower).
pub fn pack_b(b: MatRef<f32>, out: &mut [f32]) {
    let (k, n) = (b.rows, b.cols);
    assert!(out.len() >= packed_b_len(k, n));
    // SAFETY: out holds packed_b_len(k, n) values (asserted) and is exclusively borrowed.
    unsafe { pack_b_rows(b, 0, k, out.as_mut_ptr()) }
}

/// Rows k0 .. k0 + b.rows of a packed (K, N) B, from `b` (those rows): what [`pack_b`] writes
/// there. Tasks packing disjoint row ranges write disjoint parts of the buffer.
///
/// # Safety
/// `out` must point to packed_b_len(k, b.cols) writable floats, k0 + b.rows ≤ k, and no one
/// else may access the rows written here during the call.
pub unsafe fn pack_b_rows(b: MatRef<f32>, k0: usize, k: usize, out: *mut f32) {
    let (rows, n) = (b.rows, b.cols);
    assert!(k0 + rows <= k);
    for j0 in (0..n).step_by(NR) {
        let w = NR.min(n - j0);
        // SAFETY: panel j0/NR's rows k0 .. k0 + rows lie inside out (caller's promise).
        let panel = unsafe { std::slice::from_raw_parts_mut(out.add(j0 * k + k0 * w), rows * w) };
        for (kk, dst) in panel.chunks_exact_mut(w).enumerate() {
            if b.cs == 1 {
                let src = (kk as isize * b.rs) as usize + j0;
                dst.copy_from_slice(&b.data[src..src + w]);
            } else {
                for (j, d) in dst.iter_mut().enumerate() {
                    *d = b.data[(kk as isize * b.rs + (j0 + j) as isize * b.cs) as usize];
                }
            }
        }
    }
}

/// Cᵀ of one A panel (K, MR) k-major and packed B (K, N): ct[j·ldct + r], r < MR, j < N.
/// Panics unless [`available`].
pub fn panel_product(a: &[f32], k: usize, pb: &[f32], n: usize, ct: &mut [f32], ldct: usize) {
    assert!(available(), "packed GEMM needs AVX-512");
    assert!(a.len() >= k * MR && pb.len() >= packed_b_len(k, n));
    assert!(n == 0 || ct.len() >= (n - 1) * ldct + MR);
    // Blocks of KC: the A micro-panel (KC·MR) stays in L1 while it meets every B panel.
    #[cfg(target_arch = "x86_64")]
    for k0 in (0..k).step_by(KC) {
        let kb = KC.min(k - k0);
        let a = &a[k0 * MR..];
        for j0 in (0..n).step_by(NR) {
            let w = NR.min(n - j0);
            let b = &pb[j0 * k + k0 * w..][..kb * w];
            let c = &mut ct[j0 * ldct..];
            // The next panel's block follows this panel (see `PackedA::panel`).
            let pf = if j0 == 0 { a.as_ptr().wrapping_add(k * MR) } else { a.as_ptr() };
            // SAFETY: AVX-512 checked above; a holds kb·MR, b kb·w values; c holds w rows of
            // ldct with MR values from offset 0 (asserted above).
            unsafe { micro_dispatch(w, kb, a.as_ptr(), b.as_ptr(), w, c.as_mut_ptr(), ldct, k0 > 0, pf) }
        }
    }
}

/// y (M, N) = ep(A · B + bias), A packed, B packed by [`pack_b`]: the product of a
/// convolution whose output plane is small (see the module notes), y row-major. Panels of MR
/// output channels run in parallel with `parallel`; each thread transposes its Cᵀ tile into
/// y's rows and applies bias and activation while the tile is in L1. Panics unless
/// [`available`].
pub fn gemm_bias_act(pa: &PackedA, pb: &[f32], n: usize, bias: Option<&[f32]>, ep: Epilogue, y: &mut [f32], parallel: bool) {
    product_rows(pa, pb, n, y, n, parallel, bias, ep)
}

/// y = A · B as [`gemm_bias_act`] without bias or activation, row r of y at `y[r·ldy ..][.. N]`.
pub fn gemm_into(pa: &PackedA, pb: &[f32], n: usize, y: &mut [f32], ldy: usize, parallel: bool) {
    product_rows(pa, pb, n, y, ldy, parallel, None, Epilogue::None)
}

/// What [`gemm_bias_act`] and [`gemm_into`] share: each panel's Cᵀ, transposed into y's rows
/// (stride ldy) with bias and activation ([`store_transposed`]).
#[allow(clippy::too_many_arguments)] // the GEMM's operands, its epilogue and the threading
fn product_rows(pa: &PackedA, pb: &[f32], n: usize, y: &mut [f32], ldy: usize, parallel: bool, bias: Option<&[f32]>, ep: Epilogue) {
    let (m, k) = (pa.m, pa.k);
    assert!(pb.len() >= packed_b_len(k, n) && n <= ldy && (m == 0 || y.len() >= (m - 1) * ldy + n));
    assert!(bias.is_none_or(|b| b.len() >= m));
    if m == 0 || n == 0 {
        return;
    }
    let yp = SyncPtr(y.as_mut_ptr());
    let run = |p: usize| {
        with_local(n * MR, |ct| {
            panel_product(pa.panel(p), k, pb, n, ct, MR);
            // SAFETY: AVX-512 (panel_product checked it); ct holds n·MR values; rows p·MR ..
            // p·MR + rows of y lie inside y (asserted above) and only panel p (this call)
            // writes them; bias holds m values.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                store_transposed(ct, n, MR.min(m - p * MR), bias.map(|b| b[p * MR..].as_ptr()), ep, yp.get().add(p * MR * ldy), ldy)
            };
        })
    };
    let panels = pa.panels();
    if parallel && crate::num_threads() > 1 && panels > 1 {
        (0..panels).into_par_iter().for_each(run);
    } else {
        (0..panels).for_each(run);
    }
}

/// Columns per task of [`gemm_bias_act_b_in_place`]: four B panels.
const COLS_PER_TASK: usize = 4 * NR;

/// y (M, N) = ep(A · B + bias) as [`gemm_bias_act`], with B (K, N) read in place (row k at
/// `b[k·ldb ..]`) instead of packed: a 1×1 convolution's B is its input, and packing it cost
/// as much as the product on MobileNet's narrow layers. The work splits over panels of MR
/// channels and groups of [`COLS_PER_TASK`] columns, so layers with few panels (96 channels:
/// three) still spread over the threads. Panics unless [`available`].
#[allow(clippy::too_many_arguments)] // the GEMM's operands, its epilogue and the threading
pub fn gemm_bias_act_b_in_place(
    pa: &PackedA,
    b: &[f32],
    ldb: usize,
    n: usize,
    bias: Option<&[f32]>,
    ep: Epilogue,
    y: &mut [f32],
    parallel: bool,
) {
    let (m, k) = (pa.m, pa.k);
    assert!(available(), "packed GEMM needs AVX-512");
    assert!(n <= ldb && (k == 0 || b.len() >= (k - 1) * ldb + n) && (m == 0 || y.len() >= (m - 1) * n + n));
    assert!(bias.is_none_or(|b| b.len() >= m));
    if m == 0 || n == 0 {
        return;
    }
    let yp = SyncPtr(y.as_mut_ptr());
    // Column groups of four B panels, narrower when that leaves too few tasks to share evenly:
    // 160 channels (five panels) on a 7×7 plane were five tasks on two threads, 3:2
    // (MobileNetV2's 960→160 ran at 127 GFLOP/s against 190 for its 960→320).
    let threads = if parallel { crate::num_threads() } else { 1 };
    let mut cols = COLS_PER_TASK;
    while cols > NR && pa.panels() * n.div_ceil(cols) < 4 * threads {
        cols -= NR;
    }
    let groups = n.div_ceil(cols);
    let run = |t: usize| {
        let (p, g) = (t / groups, t % groups);
        let (c0, c1) = (g * cols, ((g + 1) * cols).min(n));
        // SAFETY: AVX-512 checked above; B's rows hold columns c0 .. c1 (asserted above);
        // columns c0 .. c1 of rows p·MR .. p·MR + MR (within M) lie inside y, and only this
        // task writes them; bias holds m values.
        unsafe {
            panel_b_in_place(
                pa,
                p,
                0..k,
                b.as_ptr().add(c0),
                ldb,
                c1 - c0,
                bias.map(|b| b[p * MR..].as_ptr()),
                ep,
                yp.get().add(p * MR * n + c0),
                n,
            )
        }
    };
    let tasks = pa.panels() * groups;
    if parallel && crate::num_threads() > 1 && tasks > 1 {
        (0..tasks).into_par_iter().for_each(run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Rows p·MR .. p·MR + MR (those below M) of y = ep(A[:, ks] · B + bias) for one panel p of
/// `pa` and the K range `ks`: y[r·ldy + j] for j < cols, from B read in place (row k − ks.start
/// at `b[(k − ks.start)·ldb ..]`). `bias` points at the panel's first row's bias. The building
/// block of [`gemm_bias_act_b_in_place`] and of the fused blocks split by channels
/// (`crate::fused`), whose parts multiply a range of the projection's K.
///
/// # Safety
/// [`available`]; ks ⊆ 0..pa.k; B's rows hold `cols` floats each; y's rows (ldy apart) hold
/// `cols` floats each and are not accessed by anyone else during the call; bias, when given,
/// holds the panel's rows.
#[allow(clippy::too_many_arguments)] // the panel, its K range, B, the epilogue and y
pub unsafe fn panel_b_in_place(
    pa: &PackedA,
    p: usize,
    ks: std::ops::Range<usize>,
    b: *const f32,
    ldb: usize,
    cols: usize,
    bias: Option<*const f32>,
    ep: Epilogue,
    y: *mut f32,
    ldy: usize,
) {
    debug_assert!(ks.end <= pa.k && p < pa.panels());
    let rows = MR.min(pa.m - p * MR);
    with_local(cols * MR, |ct| {
        #[cfg(target_arch = "x86_64")]
        for k0 in ks.clone().step_by(KC) {
            let kb = KC.min(ks.end - k0);
            let a = &pa.panel(p)[k0 * MR..];
            for j0 in (0..cols).step_by(NR) {
                let w = NR.min(cols - j0);
                // The next panel's block follows this panel (see `PackedA::panel`).
                let pf = if j0 == 0 { a.as_ptr().wrapping_add(pa.k * MR) } else { a.as_ptr() };
                // SAFETY: AVX-512 (the caller's promise); a holds kb·MR values; B's rows
                // k0 − ks.start .. + kb hold columns j0 .. j0 + w; ct holds cols·MR.
                unsafe {
                    micro_dispatch(
                        w,
                        kb,
                        a.as_ptr(),
                        b.add((k0 - ks.start) * ldb + j0),
                        ldb,
                        ct.as_mut_ptr().add(j0 * MR),
                        MR,
                        k0 > ks.start,
                        pf,
                    )
                }
            }
        }
        // SAFETY: ct holds cols·MR values; y's rows are the caller's (see above).
        #[cfg(target_arch = "x86_64")]
        unsafe {
            store_transposed(ct, cols, rows, bias, ep, y, ldy)
        };
    })
}

thread_local! {
    static LOCAL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// A per-thread buffer of `len` floats (contents unspecified) apart from `Float::with_scratch`
/// and `with_aux_scratch`, one of which the calling thread holds (for packed B: the conv's
/// scratch, or Winograd's aux) while it may run panels itself.
pub(crate) fn with_local<R>(len: usize, f: impl FnOnce(&mut [f32]) -> R) -> R {
    crate::with_buffer(&LOCAL, len, f)
}

/// A panel's output from its Cᵀ tile: y[r·ldy + j] = ep(ct[j·MR + r] + bias[r]) for r < rows
/// (≤ MR), j < w. Blocks of 16 × 16 are transposed in registers, so each row of y is written
/// by whole vectors with bias and activation on the way (the scalar copy had been 12% of the
/// in-place 1×1 GEMM's samples on MobileNetV2's 7×7 layers).
///
/// # Safety
/// AVX-512F; ct holds w·MR values; rows r < rows of y (from `y`, ldy apart) hold w values
/// each, not accessed by anyone else; bias (when given) holds `rows` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn store_transposed(ct: &[f32], w: usize, rows: usize, bias: Option<*const f32>, ep: Epilogue, y: *mut f32, ldy: usize) {
    use std::arch::x86_64::*;
    assert!(ct.len() >= w * MR && rows <= MR);
    let (lo, hi) = ep.bounds::<f32>();
    let (vlo, vhi) = (_mm512_set1_ps(lo), _mm512_set1_ps(hi));
    for r0 in (0..rows).step_by(16) {
        for j0 in (0..w).step_by(16) {
            let nj = (w - j0).min(16);
            // Row j of the block: column j0 + j of Cᵀ, channels r0 .. r0 + 16 (inside MR).
            let mut v: [__m512; 16] =
                std::array::from_fn(|j| if j < nj { _mm512_loadu_ps(ct.as_ptr().add((j0 + j) * MR + r0)) } else { _mm512_setzero_ps() });
            crate::simd::transpose16(&mut v);
            let mask = ((1u32 << nj) - 1) as __mmask16;
            for (r, &t) in v.iter().enumerate().take(rows - r0) {
                let o = match bias {
                    Some(b) => _mm512_add_ps(t, _mm512_set1_ps(*b.add(r0 + r))),
                    None => t,
                };
                let o = if ep == Epilogue::None { o } else { crate::simd::clamp_ps(o, vlo, vhi) };
                _mm512_mask_storeu_ps(y.add((r0 + r) * ldy + j0), mask, o);
            }
        }
    }
}

/// Depth of a K block (see [`panel_product`]): 192·MR floats = 24 KiB of A.
const KC: usize = 192;

/// One MR × w tile of Cᵀ (see [`micro`]) for any w ≤ [`NR`].
///
/// # Safety
/// AVX-512F; a holds k·MR floats, b rows k of ldb (w read from each), c w rows of ldc with MR
/// floats each, accessed by no one else during the call.
#[cfg(target_arch = "x86_64")]
#[allow(clippy::too_many_arguments)] // the tile's operands with their strides
pub(crate) unsafe fn micro_dispatch(
    w: usize,
    k: usize,
    a: *const f32,
    b: *const f32,
    ldb: usize,
    c: *mut f32,
    ldc: usize,
    acc: bool,
    pf: *const f32,
) {
    match w {
        14 => micro::<14>(k, a, b, ldb, c, ldc, acc, pf),
        13 => micro::<13>(k, a, b, ldb, c, ldc, acc, pf),
        12 => micro::<12>(k, a, b, ldb, c, ldc, acc, pf),
        11 => micro::<11>(k, a, b, ldb, c, ldc, acc, pf),
        10 => micro::<10>(k, a, b, ldb, c, ldc, acc, pf),
        9 => micro::<9>(k, a, b, ldb, c, ldc, acc, pf),
        8 => micro::<8>(k, a, b, ldb, c, ldc, acc, pf),
        7 => micro::<7>(k, a, b, ldb, c, ldc, acc, pf),
        6 => micro::<6>(k, a, b, ldb, c, ldc, acc, pf),
        5 => micro::<5>(k, a, b, ldb, c, ldc, acc, pf),
        4 => micro::<4>(k, a, b, ldb, c, ldc, acc, pf),
        3 => micro::<3>(k, a, b, ldb, c, ldc, acc, pf),
        2 => micro::<2>(k, a, b, ldb, c, ldc, acc, pf),
        _ => micro::<1>(k, a, b, ldb, c, ldc, acc, pf),
    }
}

/// One MR × W tile: c[j·ldc + r] (+)= Σ_k a[k·MR + r]·b[k·ldb + j] for r < MR, j < W (a
/// packed B panel has ldb = W; B read in place has its row stride). Per k it also prefetches
/// the 2 cache lines at pf + k·MR into L2: the callers point the first tile of each K block at
/// the next panel's block, whose weights then come from L2 rather than memory (a network's
/// other layers evict them between runs), and the other tiles at a, which is in L1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[allow(clippy::too_many_arguments)]
unsafe fn micro<const W: usize>(k: usize, a: *const f32, b: *const f32, ldb: usize, c: *mut f32, ldc: usize, acc: bool, pf: *const f32) {
    use std::arch::x86_64::*;
    let mut lo = [_mm512_setzero_ps(); W];
    let mut hi = [_mm512_setzero_ps(); W];
    if acc {
        for j in 0..W {
            lo[j] = _mm512_loadu_ps(c.add(j * ldc));
            hi[j] = _mm512_loadu_ps(c.add(j * ldc + 16));
        }
    }
    for kk in 0..k {
        // Into L2 ahead of its use (prefetches never fault; past the end they are dropped).
        _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(kk * MR) as *const i8);
        _mm_prefetch::<_MM_HINT_T1>(pf.wrapping_add(kk * MR + 16) as *const i8);
        let a0 = _mm512_loadu_ps(a.add(kk * MR));
        let a1 = _mm512_loadu_ps(a.add(kk * MR + 16));
        let bk = b.add(kk * ldb);
        for j in 0..W {
            let bj = _mm512_set1_ps(*bk.add(j));
            lo[j] = _mm512_fmadd_ps(a0, bj, lo[j]);
            hi[j] = _mm512_fmadd_ps(a1, bj, hi[j]);
        }
    }
    for j in 0..W {
        _mm512_storeu_ps(c.add(j * ldc), lo[j]);
        _mm512_storeu_ps(c.add(j * ldc + 16), hi[j]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::matmul_naive;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        /// The in-place-B product against the naive twin: partial channel panels, column
        /// groups and B panels, a row stride past N, bias and each activation, serial and
        /// parallel.
        #[test]
        fn b_in_place_matches_naive(m in 1usize..80, k in 1usize..300, n in 1usize..130, pad in 0usize..3, act in 0usize..3, par: bool, seed in 0u64..1000) {
            if !available() {
                return Ok(());
            }
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5 };
            let ldb = n + pad;
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..(k - 1) * ldb + n).map(|_| rnd()).collect();
            let bias: Vec<f32> = (0..m).map(|_| rnd()).collect();
            let ep = [Epilogue::None, Epilogue::Relu, Epilogue::Clamp(-0.3, 0.4)][act];
            let pa = PackedA::new(MatRef::row_major(&a, m, k));
            let mut y = vec![f32::NAN; m * n];
            gemm_bias_act_b_in_place(&pa, &b, ldb, n, Some(&bias), ep, &mut y, par);
            let mut want = vec![0.0f64; m * n];
            for i in 0..m {
                for j in 0..n {
                    want[i * n + j] = bias[i] as f64 + (0..k).map(|t| a[i * k + t] as f64 * b[t * ldb + j] as f64).sum::<f64>();
                }
            }
            ep.apply(&mut want);
            prop_assert!(crate::reference::max_abs_diff(&y, &want) < 1e-4);
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(60))]
        #[test]
        fn panel_products_match_naive(m in 1usize..80, k in 1usize..70, n in 1usize..50, ta: bool, seed in 0u64..1000) {
            if !available() {
                return Ok(());
            }
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) as f32 - 0.5 };
            let a: Vec<f32> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f32> = (0..k * n).map(|_| rnd()).collect();
            let a_store: Vec<f32> = if ta { (0..k * m).map(|i| a[(i % m) * k + i / m]).collect() } else { a.clone() };
            let av = if ta { MatRef::row_major(&a_store, k, m).t() } else { MatRef::row_major(&a_store, m, k) };
            let pa = PackedA::new(av);
            let mut pb = vec![f32::NAN; packed_b_len(k, n)];
            pack_b(MatRef::row_major(&b, k, n), &mut pb);
            let ld = pa.m_padded() + 3;
            let mut ct = vec![f32::NAN; n * ld];
            for p in 0..m.div_ceil(MR) {
                panel_product(pa.panel(p), k, &pb, n, &mut ct[p * MR..], ld);
            }
            let (a64, b64): (Vec<f64>, Vec<f64>) = (a.iter().map(|&v| v as f64).collect(), b.iter().map(|&v| v as f64).collect());
            let mut want = vec![0.0f64; m * n];
            matmul_naive(&a64, &b64, &mut want, m, k, n);
            for i in 0..m {
                for j in 0..n {
                    prop_assert!((ct[j * ld + i] as f64 - want[i * n + j]).abs() < 1e-4, "({i}, {j})");
                }
            }
            for j in 0..n {
                for i in m..pa.m_padded() {
                    prop_assert_eq!(ct[j * ld + i], 0.0);
                }
            }
        }
    }
}
