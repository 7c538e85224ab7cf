//! The conv backward on flex: one GEMM for each gradient, over im2col columns.
//!
//! With `L = h'·w'` output positions, `K = c_in·k_h·k_w` patch values and the output gradient
//! laid out channel-major as `G = [c_out, batch·L]`:
//!
//! ```text
//! ∂ℓ/∂w = G · R                 R = [batch·L, K]: each output position's input patch (im2row)
//! ∂ℓ/∂x = col2im(Wᵀ · G)        Wᵀ = [K, c_out]; col2im adds each column back onto its patch
//! ```
//!
//! For stride 1 and dilation 1 the input gradient is instead flex's forward conv of `∂ℓ/∂y` with
//! the flipped, transposed kernel (padding `k − 1 − p`): the same sum, with flex's tiled im2col.
//!
//! The GEMMs are flex's (the `gemm` crate, parallel above its size threshold); the layout
//! changes around them are plain loops over contiguous slices, parallel over images or channels.
//! f32 and f64 tensors without groups take this path; other dtypes (f16, bf16) and grouped convs
//! take Burn's default.

use burn::tensor::ops::{ConvOptions, FloatTensorOps, ModuleOps};
use burn::tensor::{DType, Shape, TensorMetadata};
use burn_flex::{Flex, FlexTensor};
use rayon::prelude::*;

use super::flex::{Scalar, from_values as tensor, kernel_dtype};

/// The sizes of one convolution, read from its input, weight and output gradient.
#[derive(Clone, Copy, Debug)]
struct Geometry {
    batch: usize,
    c_in: usize,
    c_out: usize,
    /// Input height and width.
    input: [usize; 2],
    /// Kernel height and width.
    kernel: [usize; 2],
    /// Output height and width.
    output: [usize; 2],
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
}

impl Geometry {
    /// The geometry when the fast path applies: one dtype, f32 or f64, and no groups.
    fn of(
        x: &FlexTensor,
        weight: &FlexTensor,
        grad: &FlexTensor,
        options: &ConvOptions<2>,
    ) -> Option<Self> {
        if kernel_dtype(&[x, weight, grad]).is_none() || options.groups != 1 {
            return None;
        }
        let [batch, c_in, h, w] = dims(&x.shape());
        let [c_out, _, kh, kw] = dims(&weight.shape());
        let [_, _, oh, ow] = dims(&grad.shape());
        Some(Self {
            batch,
            c_in,
            c_out,
            input: [h, w],
            kernel: [kh, kw],
            output: [oh, ow],
            stride: options.stride,
            padding: options.padding,
            dilation: options.dilation,
        })
    }

    /// Output positions per image.
    fn positions(&self) -> usize {
        self.output[0] * self.output[1]
    }

    /// Values per patch.
    fn patch(&self) -> usize {
        self.c_in * self.kernel[0] * self.kernel[1]
    }

    /// The input row or column that output position `o` reads through kernel tap `t` along
    /// `axis`, or `None` where it reads the zero padding.
    fn source(&self, axis: usize, o: usize, t: usize) -> Option<usize> {
        (o * self.stride[axis] + t * self.dilation[axis])
            .checked_sub(self.padding[axis])
            .filter(|&i| i < self.input[axis])
    }
}

fn dims(shape: &Shape) -> [usize; 4] {
    [shape[0], shape[1], shape[2], shape[3]]
}

fn values(t: &FlexTensor) -> FlexTensor {
    t.to_contiguous()
}

/// `R = [batch·L, K]`: row `n·L + p` holds the input patch that output position `p` of image `n`
/// reads, zeros where it reads padding.
fn im2row<E: Scalar>(x: &[E], g: &Geometry) -> Vec<E> {
    let (l, k) = (g.positions(), g.patch());
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let mut rows = vec![E::default(); g.batch * l * k];
    rows.par_chunks_mut(l * k)
        .enumerate()
        .for_each(|(n, rows)| {
            let image = &x[n * g.c_in * h * w..][..g.c_in * h * w];
            for (p, row) in rows.chunks_exact_mut(k).enumerate() {
                let (oy, ox) = (p / g.output[1], p % g.output[1]);
                for c in 0..g.c_in {
                    let plane = &image[c * h * w..][..h * w];
                    for i in 0..kh {
                        let Some(iy) = g.source(0, oy, i) else {
                            continue;
                        };
                        for j in 0..kw {
                            if let Some(ix) = g.source(1, ox, j) {
                                row[(c * kh + i) * kw + j] = plane[iy * w + ix];
                            }
                        }
                    }
                }
            }
        });
    rows
}

/// `G = [c_out, batch·L]` from the output gradient `[batch, c_out, L]`.
fn channel_major<E: Scalar>(grad: &[E], g: &Geometry) -> Vec<E> {
    let l = g.positions();
    let mut out = vec![E::default(); g.c_out * g.batch * l];
    out.par_chunks_mut(g.batch * l)
        .enumerate()
        .for_each(|(o, row)| {
            for (n, dst) in row.chunks_exact_mut(l).enumerate() {
                dst.copy_from_slice(&grad[(n * g.c_out + o) * l..][..l]);
            }
        });
    out
}

/// `∂ℓ/∂x = [batch, c_in, h, w]` from the columns `Wᵀ·G = [K, batch·L]`: every column value is
/// added to the input position it was read from. Parallel over `(image, channel)` planes, which
/// no two tasks share.
fn col2im<E: Scalar>(cols: &[E], g: &Geometry) -> Vec<E> {
    let l = g.positions();
    let [h, w] = g.input;
    let [kh, kw] = g.kernel;
    let [oh, ow] = g.output;
    let width = g.batch * l;
    let mut dx = vec![E::default(); g.batch * g.c_in * h * w];
    dx.par_chunks_mut(h * w)
        .enumerate()
        .for_each(|(nc, plane)| {
            let (n, c) = (nc / g.c_in, nc % g.c_in);
            for i in 0..kh {
                for j in 0..kw {
                    let col = &cols[((c * kh + i) * kw + j) * width + n * l..][..l];
                    for oy in 0..oh {
                        let Some(iy) = g.source(0, oy, i) else {
                            continue;
                        };
                        let line = &col[oy * ow..][..ow];
                        for (ox, &v) in line.iter().enumerate() {
                            if let Some(ix) = g.source(1, ox, j) {
                                plane[iy * w + ix] += v;
                            }
                        }
                    }
                }
            }
        });
    dx
}

/// `Wᵀ = [K, c_out]` from the weight `[c_out, K]`.
fn transpose<E: Scalar>(weight: &[E], g: &Geometry) -> Vec<E> {
    let k = g.patch();
    let mut out = vec![E::default(); k * g.c_out];
    for (o, row) in weight.chunks_exact(k).enumerate() {
        for (i, &v) in row.iter().enumerate() {
            out[i * g.c_out + o] = v;
        }
    }
    out
}

/// `w̃[ci, co, i, j] = w[co, ci, k_h − 1 − i, k_w − 1 − j]`: the kernel of the transposed conv.
fn flipped_transpose<E: Scalar>(weight: &[E], g: &Geometry) -> Vec<E> {
    let [kh, kw] = g.kernel;
    let mut out = vec![E::default(); weight.len()];
    for co in 0..g.c_out {
        for ci in 0..g.c_in {
            for i in 0..kh {
                for j in 0..kw {
                    out[((ci * g.c_out + co) * kh + i) * kw + j] =
                        weight[((co * g.c_in + ci) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
                }
            }
        }
    }
    out
}

/// `∂ℓ/∂x` of a stride-1, dilation-1 conv: flex's forward conv of `∂ℓ/∂y` with the flipped,
/// transposed kernel and the complementary padding (`k − 1 − p`), or `None` when the padding is
/// larger than that (the general path handles it).
fn input_grad_stride1<E: Scalar>(
    weight: &FlexTensor,
    grad: &FlexTensor,
    g: &Geometry,
) -> Option<FlexTensor> {
    let [kh, kw] = g.kernel;
    let fits = g.stride == [1, 1] && g.dilation == [1, 1] && g.padding[0] < kh && g.padding[1] < kw;
    if !fits {
        return None;
    }
    let w = values(weight);
    let kernel = tensor(
        flipped_transpose(E::slice(&w), g),
        [g.c_in, g.c_out, kh, kw],
    );
    let options = ConvOptions::new(
        [1, 1],
        [kh - 1 - g.padding[0], kw - 1 - g.padding[1]],
        [1, 1],
        1,
    );
    Some(Flex::conv2d(grad.clone(), kernel, None, options))
}

/// `∂ℓ/∂x` in element type `E`.
fn input_grad_typed<E: Scalar>(weight: &FlexTensor, grad: &FlexTensor, g: &Geometry) -> FlexTensor {
    if let Some(dx) = input_grad_stride1::<E>(weight, grad, g) {
        return dx;
    }
    let (w, dy) = (values(weight), values(grad));
    let w_t = tensor(transpose(E::slice(&w), g), [g.patch(), g.c_out]);
    let dy = tensor(
        channel_major(E::slice(&dy), g),
        [g.c_out, g.batch * g.positions()],
    );
    let cols = values(&Flex::float_matmul(w_t, dy));
    let [h, w] = g.input;
    tensor(col2im(E::slice(&cols), g), [g.batch, g.c_in, h, w])
}

/// `∂ℓ/∂w` in element type `E`.
fn weight_grad_typed<E: Scalar>(x: &FlexTensor, grad: &FlexTensor, g: &Geometry) -> FlexTensor {
    let (xs, dy) = (values(x), values(grad));
    let rows = tensor(
        im2row(E::slice(&xs), g),
        [g.batch * g.positions(), g.patch()],
    );
    let dy = tensor(
        channel_major(E::slice(&dy), g),
        [g.c_out, g.batch * g.positions()],
    );
    Flex::float_matmul(dy, rows)
}

/// The flex override of [`super::QuantBackend::conv2d_input_grad`], with Burn's as the fallback
/// (grouped convs, half-precision dtypes).
pub(super) fn conv2d_input_grad(
    x: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    match Geometry::of(&x, &weight, &grad, &options) {
        Some(g) if x.dtype() == DType::F64 => input_grad_typed::<f64>(&weight, &grad, &g),
        Some(g) => input_grad_typed::<f32>(&weight, &grad, &g),
        None => Flex::conv2d_x_backward(x, weight, grad, options),
    }
}

/// The flex override of [`super::QuantBackend::conv2d_weight_grad`], with Burn's as the fallback.
pub(super) fn conv2d_weight_grad(
    x: FlexTensor,
    weight: FlexTensor,
    grad: FlexTensor,
    options: ConvOptions<2>,
) -> FlexTensor {
    let dw = match Geometry::of(&x, &weight, &grad, &options) {
        Some(g) if x.dtype() == DType::F64 => weight_grad_typed::<f64>(&x, &grad, &g),
        Some(g) => weight_grad_typed::<f32>(&x, &grad, &g),
        None => return Flex::conv2d_weight_backward(x, weight, grad, options),
    };
    Flex::float_reshape(dw, weight.shape())
}
