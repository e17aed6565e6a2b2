//! Scalar functions written so that loops calling them vectorise (the standard library's call
//! into libm, one element at a time).

/// `e^x`, relative error below 2e-7; inputs are first clamped to [-87.3, 88.3].
#[inline(always)]
pub fn exp(x: f32) -> f32 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_145_75;
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.3, 88.3);
    let n = (x * LOG2E).round_ties_even();
    let r = (-n).mul_add(LN2_LO, (-n).mul_add(LN2_HI, x));
    // e^r on [-ln2/2, ln2/2], Taylor to degree 7.
    let mut p: f32 = 1.0 / 5040.0;
    p = p.mul_add(r, 1.0 / 720.0);
    p = p.mul_add(r, 1.0 / 120.0);
    p = p.mul_add(r, 1.0 / 24.0);
    p = p.mul_add(r, 1.0 / 6.0);
    p = p.mul_add(r, 0.5);
    p = p.mul_add(r, 1.0);
    p = p.mul_add(r, 1.0);
    // 2^n from its exponent bits: adding 2^23 leaves the integer n + 127 (in 1..=254 after the
    // clamp) in the low mantissa bits, and shifting moves it into the exponent field. Bit
    // operations only, so that the loops calling this vectorise.
    let biased = n + (127.0 + 8_388_608.0);
    p * f32::from_bits(biased.to_bits() << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_is_accurate_and_clamped() {
        let mut worst = 0f64;
        for i in -20_000..=20_000 {
            let x = i as f32 * 0.004;
            let exact = f64::from(x).exp();
            worst = worst.max(((f64::from(exp(x)) - exact) / exact).abs());
        }
        assert!(worst < 2e-7, "exp relative error {worst}");
        assert_eq!(exp(-200.0), exp(-87.3));
        assert!(exp(-87.3) < 1e-37);
        assert!(exp(f32::NEG_INFINITY) < 1e-37);
    }
}
