//! What both convolution kernels share: a convolution's shape, and what happens to each output
//! value after it ([`Epilogue`]: bias, ReLU, a residual add).

/// Shape of one convolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvShape {
    pub in_ch: usize,
    pub out_ch: usize,
    pub kernel: usize,
    pub dilation: usize,
    pub stride: usize,
    pub padding: usize,
}

impl ConvShape {
    /// Output height and width for an `h` x `w` input.
    pub fn out_size(&self, h: usize, w: usize) -> (usize, usize) {
        let span = self.dilation * (self.kernel - 1) + 1;
        let o = |n: usize| (n + 2 * self.padding).saturating_sub(span) / self.stride + 1;
        (o(h), o(w))
    }
}

/// What happens to each output value after the convolution and bias.
#[derive(Debug, Clone, Copy, Default)]
pub struct Epilogue<'a> {
    pub relu: bool,
    /// Added after the ReLU (RSU's `hx1d + hxin`); same shape as the output.
    pub residual: Option<&'a [f32]>,
}

/// ReLU and residual on one biased output value at flat index `at`.
#[inline(always)]
pub fn finish_value(x: f32, ep: Epilogue, at: usize) -> f32 {
    let x = if ep.relu { x.max(0.0) } else { x };
    match ep.residual {
        Some(r) => x + r[at],
        None => x,
    }
}

/// Bias, ReLU and residual on one output row segment starting at flat index `at`.
#[inline(always)]
pub fn finish_row(row: &mut [f32], bias: f32, ep: Epilogue, at: usize) {
    match (ep.relu, ep.residual) {
        (false, None) => row.iter_mut().for_each(|v| *v += bias),
        (true, None) => row.iter_mut().for_each(|v| *v = (*v + bias).max(0.0)),
        (relu, Some(res)) => {
            let res = &res[at..at + row.len()];
            for (v, r) in row.iter_mut().zip(res) {
                let x = *v + bias;
                *v = if relu { x.max(0.0) } else { x } + r;
            }
        }
    }
}
