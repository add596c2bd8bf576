//! Dense matrix multiply over the `gemm` crate, with strides so transposed views need no copy.

use crate::Float;

/// A row-major or strided matrix view: element (i, j) lives at `ptr[i * rs + j * cs]`.
#[derive(Clone, Copy, Debug)]
pub struct MatRef<'a, T> {
    pub data: &'a [T],
    pub rows: usize,
    pub cols: usize,
    pub rs: isize,
    pub cs: isize,
}

impl<'a, T> MatRef<'a, T> {
    /// A contiguous row-major (rows, cols) matrix.
    pub fn row_major(data: &'a [T], rows: usize, cols: usize) -> Self {
        MatRef { data, rows, cols, rs: cols as isize, cs: 1 }
    }
    /// The transpose, as a view (no copy).
    pub fn t(self) -> Self {
        MatRef { data: self.data, rows: self.cols, cols: self.rows, rs: self.cs, cs: self.rs }
    }
    fn max_index(&self) -> usize {
        if self.rows == 0 || self.cols == 0 {
            return 0;
        }
        ((self.rows - 1) as isize * self.rs + (self.cols - 1) as isize * self.cs) as usize
    }
}

/// c (m, n) = beta·c + a (m, k) @ b (k, n), c row-major contiguous.
/// `accumulate = false` overwrites c. `parallel` lets gemm use the rayon pool.
pub fn gemm<T: Float>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], accumulate: bool, parallel: bool) {
    gemm_strided(a, b, c, b.cols as isize, 1, accumulate, parallel)
}

/// As [`gemm`], with c's element (i, j) at `c[i·c_rs + j·c_cs]` (e.g. column-major c, whose
/// layout lets the gemm crate skip packing for some operand shapes).
pub fn gemm_strided<T: Float>(a: MatRef<T>, b: MatRef<T>, c: &mut [T], c_rs: isize, c_cs: isize, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m > 0 && n > 0 {
        let last = (m - 1) as isize * c_rs + (n - 1) as isize * c_cs;
        assert!(c_rs >= 0 && c_cs >= 0 && (last as usize) < c.len(), "gemm: output view out of bounds");
    }
    assert_eq!(b.rows, k, "gemm: inner dimensions differ");
    if m == 0 || n == 0 {
        return;
    }
    if k == 0 {
        if !accumulate {
            for i in 0..m {
                for j in 0..n {
                    c[i * c_rs as usize + j * c_cs as usize] = T::zero();
                }
            }
        }
        return;
    }
    // SAFETY: the output view was checked against c above; c is a distinct &mut slice.
    unsafe { gemm_raw(a, b, c.as_mut_ptr(), c_rs, c_cs, accumulate, parallel) }
}

/// As [`gemm_strided`] with c given as a pointer, for callers that write disjoint strided
/// blocks of one output from several threads (which `&mut` slices cannot express).
///
/// # Safety
/// Every `c[i·c_rs + j·c_cs]` (i < a.rows, j < b.cols) must be valid for reads and writes and
/// not accessed by anyone else during the call; c_rs, c_cs ≥ 0; a.cols == b.rows; k > 0.
pub(crate) unsafe fn gemm_raw<T: Float>(a: MatRef<T>, b: MatRef<T>, c: *mut T, c_rs: isize, c_cs: isize, accumulate: bool, parallel: bool) {
    let (m, k, n) = (a.rows, a.cols, b.cols);
    if m == 0 || n == 0 {
        return;
    }
    assert!(k > 0 && b.rows == k, "gemm: inner dimensions differ or are empty");
    assert!(a.max_index() < a.data.len() && b.max_index() < b.data.len(), "gemm: view out of bounds");
    let par = if parallel && crate::num_threads() > 1 && m * n * k > 64 * 64 * 64 {
        gemm::Parallelism::Rayon(crate::num_threads())
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: a's and b's views were checked above; c's is the caller's promise.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            c,
            c_cs,
            c_rs,
            accumulate,
            a.data.as_ptr(),
            a.cs,
            a.rs,
            b.data.as_ptr(),
            b.cs,
            b.rs,
            T::one(),
            T::one(),
            false,
            false,
            false,
            par,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reference::matmul_naive;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(40))]
        #[test]
        fn gemm_matches_naive(m in 1usize..40, k in 1usize..40, n in 1usize..40, ta: bool, tb: bool, acc: bool, seed in 0u64..1000) {
            let mut s = seed;
            let mut rnd = || { s = s.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407); ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5 };
            let a: Vec<f64> = (0..m * k).map(|_| rnd()).collect();
            let b: Vec<f64> = (0..k * n).map(|_| rnd()).collect();
            let c0: Vec<f64> = (0..m * n).map(|_| rnd()).collect();
            // Store a as (k, m) when transposed so the view is a strided transpose.
            let a_store: Vec<f64> = if ta { (0..k * m).map(|i| a[(i % m) * k + i / m]).collect() } else { a.clone() };
            let b_store: Vec<f64> = if tb { (0..n * k).map(|i| b[(i % k) * n + i / k]).collect() } else { b.clone() };
            let av = if ta { MatRef::row_major(&a_store, k, m).t() } else { MatRef::row_major(&a_store, m, k) };
            let bv = if tb { MatRef::row_major(&b_store, n, k).t() } else { MatRef::row_major(&b_store, k, n) };
            let mut c = c0.clone();
            gemm(av, bv, &mut c, acc, true);
            let mut want = if acc { c0.clone() } else { vec![0.0; m * n] };
            matmul_naive(&a, &b, &mut want, m, k, n);
            for (x, y) in c.iter().zip(&want) { prop_assert!((x - y).abs() < 1e-9); }
        }
    }
}
