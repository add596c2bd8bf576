//! cnnkit-io: reading model files made by other tools.
//!
//! - PyTorch `.pth` / `.pt` files written by `torch.save` (zip and legacy layouts), read like
//!   `torch.load(weights_only=True)`: the pickle inside is interpreted by a restricted reader
//!   that only rebuilds tensors, dicts and basic values. No code from the file ever runs, and
//!   any other global it names is refused.
//! - numpy `.npy` float32 arrays (read and write).
//! - conversion of either PyTorch or safetensors weights to safetensors.

mod npy;
mod pickle;
mod pth;
mod value;

pub use npy::{parse_npy, read_npy, write_npy};
pub use pth::{convert_to_safetensors, load_pth, load_pth_state_dict, load_state_dict_file, read_pth};
pub use value::PyValue;

/// Whether cnnkit can build a tensor of this shape. A shape with a zero dimension has no
/// elements, but its row-major strides are products of the other dimensions, which must still
/// fit in usize (`(0, 3, 2^63)` would overflow them).
pub(crate) fn shape_fits(shape: &[usize]) -> bool {
    shape.iter().try_fold(1usize, |n, &d| n.checked_mul(d.max(1))).is_some()
}
