//! L2-regularised logistic regression, solved by Newton-CG: the probe gate's trainer
//! ([`super::probe`]).
//!
//! The objective is scikit-learn's `LogisticRegression(C)` on standardised features
//! (`StandardScaler`, population variance, constant features left unscaled):
//! `C · Σᵢ log(1 + exp(−ỹᵢ zᵢ)) + ½‖w‖²` with `zᵢ = w·x̃ᵢ + b`, no penalty on the intercept. Each
//! Newton step solves `H s = −g` by conjugate gradients with a Jacobi preconditioner, using only
//! Hessian-vector products `Hv = C X̃ᵀ D X̃ v + v` (`D = p(1 − p)`), so no `d × d` matrix is formed; a
//! backtracking line search keeps every step a descent. The solution is mapped back to raw
//! features (`w_j / σ_j`, `b − Σ w_j μ_j / σ_j`), so inference is a dot product on raw inputs.
//! Products over the samples run on rayon threads, each output element summed in one fixed order,
//! so results do not depend on the number of threads.

use rayon::prelude::*;

use crate::{Error, Result};

/// Solver settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Solver {
    /// Inverse regularisation strength (scikit-learn's `C`), > 0.
    pub c: f64,
    /// Converged when `max |gradient| ≤ tol · max(1, C · n)`.
    pub tol: f64,
    /// Most Newton iterations.
    pub max_iter: usize,
}

impl Default for Solver {
    /// scikit-learn's default `C = 1`, a tight tolerance, 100 iterations.
    fn default() -> Self {
        Solver {
            c: 1.0,
            tol: 1e-8,
            max_iter: 100,
        }
    }
}

/// A fitted model in raw feature space.
#[derive(Debug, Clone, PartialEq)]
pub struct Fitted {
    /// Weights on the raw features.
    pub weights: Vec<f64>,
    /// Intercept on the raw features.
    pub bias: f64,
    /// Newton iterations taken.
    pub iterations: usize,
    /// Whether the gradient tolerance was reached.
    pub converged: bool,
}

/// Standardised samples, row-major `n × d`.
struct Data {
    z: Vec<f64>,
    n: usize,
    d: usize,
    y: Vec<f64>,
    c: f64,
}

impl Data {
    fn row(&self, i: usize) -> &[f64] {
        &self.z[i * self.d..(i + 1) * self.d]
    }

    /// `X̃ w + b`.
    fn margins(&self, w: &[f64], b: f64) -> Vec<f64> {
        (0..self.n)
            .into_par_iter()
            .map(|i| b + dot(self.row(i), w))
            .collect()
    }

    /// `X̃ᵀ u`, each element summed over the samples in order.
    fn transpose_times(&self, u: &[f64]) -> Vec<f64> {
        const BLOCK: usize = 64;
        let mut out = vec![0.0; self.d];
        out.par_chunks_mut(BLOCK)
            .enumerate()
            .for_each(|(k, block)| {
                let j0 = k * BLOCK;
                for (i, &ui) in u.iter().enumerate() {
                    let row = &self.row(i)[j0..j0 + block.len()];
                    for (o, &x) in block.iter_mut().zip(row) {
                        *o += x * ui;
                    }
                }
            });
        out
    }

    /// Objective at margins `m` with weights `w`.
    fn objective(&self, m: &[f64], w: &[f64]) -> f64 {
        let loss: f64 = m
            .iter()
            .zip(&self.y)
            .map(|(&z, &y)| softplus(z) - y * z)
            .sum();
        self.c * loss + 0.5 * dot(w, w)
    }
}

fn dot(a: &[f64], b: &[f64]) -> f64 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

/// `log(1 + e^z)` without overflow.
fn softplus(z: f64) -> f64 {
    if z > 0.0 {
        z + (-z).exp().ln_1p()
    } else {
        z.exp().ln_1p()
    }
}

/// The logistic function without overflow.
pub(crate) fn sigmoid(z: f64) -> f64 {
    if z >= 0.0 {
        1.0 / (1.0 + (-z).exp())
    } else {
        let e = z.exp();
        e / (1.0 + e)
    }
}

/// Per-feature mean and scale (population standard deviation; 1 for constant features).
fn moments(x: &[Vec<f32>], d: usize) -> (Vec<f64>, Vec<f64>) {
    let n = x.len() as f64;
    let mut mean = vec![0.0; d];
    for row in x {
        for (m, &v) in mean.iter_mut().zip(row) {
            *m += f64::from(v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n);
    let mut var = vec![0.0; d];
    for row in x {
        for ((s, &v), &m) in var.iter_mut().zip(row).zip(&mean) {
            *s += (f64::from(v) - m).powi(2);
        }
    }
    let scale = var
        .into_iter()
        .map(|s| {
            let sd = (s / n).sqrt();
            if sd > 0.0 {
                sd
            } else {
                1.0
            }
        })
        .collect();
    (mean, scale)
}

/// Fits the model on samples `x` (one row each, all of one width) with labels `y` (`true`:
/// positive). Errors on no samples, a single class, rows of different widths, non-finite values,
/// or a non-positive `C`.
pub fn fit(x: &[Vec<f32>], y: &[bool], solver: Solver) -> Result<Fitted> {
    if !(solver.c.is_finite() && solver.c > 0.0) {
        return Err(Error::out_of_range("probe C", solver.c, "a number > 0"));
    }
    if x.len() != y.len() || !y.contains(&true) || !y.contains(&false) {
        return Err(Error::Invalid(format!(
            "logistic regression needs samples of both classes ({} positives, {} negatives)",
            y.iter().filter(|&&p| p).count(),
            y.iter().filter(|&&p| !p).count()
        )));
    }
    let d = x[0].len();
    if let Some(row) = x.iter().find(|r| r.len() != d) {
        return Err(Error::Mismatch(format!(
            "probe training vectors of width {d} and {}",
            row.len()
        )));
    }
    if x.iter().flatten().any(|v| !v.is_finite()) {
        return Err(Error::Invalid(
            "probe training vectors hold a non-finite value".into(),
        ));
    }
    let (mean, scale) = moments(x, d);
    let z: Vec<f64> = x
        .iter()
        .flat_map(|row| {
            row.iter()
                .zip(&mean)
                .zip(&scale)
                .map(|((&v, m), s)| (f64::from(v) - m) / s)
        })
        .collect();
    let data = Data {
        z,
        n: x.len(),
        d,
        y: y.iter().map(|&p| f64::from(u8::from(p))).collect(),
        c: solver.c,
    };
    let (w, b, iterations, converged) = newton_cg(&data, solver);
    let weights: Vec<f64> = w.iter().zip(&scale).map(|(w, s)| w / s).collect();
    let bias = b - weights.iter().zip(&mean).map(|(w, m)| w * m).sum::<f64>();
    Ok(Fitted {
        weights,
        bias,
        iterations,
        converged,
    })
}

/// Gradient `(g_w, g_b)` and curvature weights `C·p(1−p)` at margins `m`.
fn gradient(data: &Data, m: &[f64], w: &[f64]) -> (Vec<f64>, f64, Vec<f64>) {
    let p: Vec<f64> = m.iter().map(|&z| sigmoid(z)).collect();
    let r: Vec<f64> = p
        .iter()
        .zip(&data.y)
        .map(|(p, y)| data.c * (p - y))
        .collect();
    let mut gw = data.transpose_times(&r);
    gw.iter_mut().zip(w).for_each(|(g, w)| *g += w);
    let gb = r.iter().sum();
    let curv = p.iter().map(|p| data.c * p * (1.0 - p)).collect();
    (gw, gb, curv)
}

fn newton_cg(data: &Data, solver: Solver) -> (Vec<f64>, f64, usize, bool) {
    let (n, d) = (data.n, data.d);
    let mut w = vec![0.0; d];
    let mut b = 0.0;
    let mut m = vec![0.0; n];
    let mut f = data.objective(&m, &w);
    let tol = solver.tol * (solver.c * n as f64).max(1.0);
    for iter in 0..solver.max_iter {
        let (gw, gb, curv) = gradient(data, &m, &w);
        let gmax = gw.iter().fold(gb.abs(), |a, g| a.max(g.abs()));
        if gmax <= tol {
            return (w, b, iter, true);
        }
        // Jacobi preconditioner: the Hessian's diagonal.
        let mut diag = vec![0.0; d];
        for (i, &c) in curv.iter().enumerate() {
            for (dj, &x) in diag.iter_mut().zip(data.row(i)) {
                *dj += c * x * x;
            }
        }
        diag.iter_mut().for_each(|v| *v += 1.0);
        let diag_b = curv.iter().sum::<f64>().max(1e-12);
        let (sw, sb) = conjugate_gradient(data, &curv, (&gw, gb), (&diag, diag_b));
        let slope = dot(&gw, &sw) + gb * sb;
        if slope >= 0.0 {
            break;
        }
        let dm = data.margins(&sw, sb);
        let mut step = 1.0;
        let mut accepted = false;
        for _ in 0..60 {
            let wt: Vec<f64> = w.iter().zip(&sw).map(|(a, s)| a + step * s).collect();
            let mt: Vec<f64> = m.iter().zip(&dm).map(|(a, s)| a + step * s).collect();
            let ft = data.objective(&mt, &wt);
            if ft <= f + 1e-4 * step * slope {
                (w, m, f) = (wt, mt, ft);
                b += step * sb;
                accepted = true;
                break;
            }
            step *= 0.5;
        }
        if !accepted {
            let (gw, gb, _) = gradient(data, &m, &w);
            let gmax = gw.iter().fold(gb.abs(), |a, g| a.max(g.abs()));
            return (w, b, iter + 1, gmax <= tol);
        }
    }
    let (gw, gb, _) = gradient(data, &m, &w);
    let gmax = gw.iter().fold(gb.abs(), |a, g| a.max(g.abs()));
    (w, b, solver.max_iter, gmax <= tol)
}

/// Preconditioned CG on `H s = −g`, to a residual of `min(0.1, √‖g‖)·‖g‖` or `d + 1` steps.
fn conjugate_gradient(
    data: &Data,
    curv: &[f64],
    (gw, gb): (&[f64], f64),
    (diag, diag_b): (&[f64], f64),
) -> (Vec<f64>, f64) {
    let hess = |vw: &[f64], vb: f64| -> (Vec<f64>, f64) {
        let u: Vec<f64> = data
            .margins(vw, vb)
            .iter()
            .zip(curv)
            .map(|(a, c)| a * c)
            .collect();
        let mut hw = data.transpose_times(&u);
        hw.iter_mut().zip(vw).for_each(|(h, v)| *h += v);
        (hw, u.iter().sum())
    };
    let gnorm = (dot(gw, gw) + gb * gb).sqrt();
    let target = gnorm.sqrt().min(0.1) * gnorm;
    let mut sw = vec![0.0; gw.len()];
    let mut sb = 0.0;
    let mut rw: Vec<f64> = gw.iter().map(|g| -g).collect();
    let mut rb = -gb;
    let mut zw: Vec<f64> = rw.iter().zip(diag).map(|(r, d)| r / d).collect();
    let mut zb = rb / diag_b;
    let mut pw = zw.clone();
    let mut pb = zb;
    let mut rz = dot(&rw, &zw) + rb * zb;
    for _ in 0..=gw.len() {
        if (dot(&rw, &rw) + rb * rb).sqrt() <= target {
            break;
        }
        let (hw, hb) = hess(&pw, pb);
        let curvature = dot(&pw, &hw) + pb * hb;
        if curvature <= 0.0 {
            break;
        }
        let alpha = rz / curvature;
        sw.iter_mut().zip(&pw).for_each(|(s, p)| *s += alpha * p);
        sb += alpha * pb;
        rw.iter_mut().zip(&hw).for_each(|(r, h)| *r -= alpha * h);
        rb -= alpha * hb;
        zw = rw.iter().zip(diag).map(|(r, d)| r / d).collect();
        zb = rb / diag_b;
        let rz_new = dot(&rw, &zw) + rb * zb;
        let beta = rz_new / rz;
        rz = rz_new;
        pw.iter_mut().zip(&zw).for_each(|(p, z)| *p = z + beta * *p);
        pb = zb + beta * pb;
    }
    (sw, sb)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_feature_optimum_has_zero_gradient() {
        // Overlapping classes on one feature: a finite optimum whose gradient vanishes.
        let x: Vec<Vec<f32>> = [0.0, 1.0, 2.0, 3.0, 1.5, 2.5, 3.5, 4.5]
            .iter()
            .map(|&v| vec![v])
            .collect();
        let y = [false, false, true, false, true, false, true, true];
        let fitted = fit(&x, &y, Solver::default()).unwrap();
        assert!(fitted.converged && fitted.weights[0] > 0.0);
        // Raw-space gradient of the standardised objective: C·Σ(p − y) = 0 for the intercept.
        let r: f64 = x
            .iter()
            .zip(&y)
            .map(|(xi, &yi)| {
                sigmoid(fitted.bias + fitted.weights[0] * f64::from(xi[0]))
                    - f64::from(u8::from(yi))
            })
            .sum();
        assert!(r.abs() < 1e-8, "{r}");
        assert!(fit(&x, &[true; 8], Solver::default()).is_err());
    }
}
