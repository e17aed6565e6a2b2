//! inferd's benchmark suite: every model family on every device this build can open, with
//! criterion's throughput set, ids `family/model/device/batch` so that one device's results line
//! up against another's, and a manifest (`target/criterion/inferd-suite.json`: the machine, the
//! devices, what was skipped) that `inferd advise` reads.
//!
//! ```text
//! cargo bench                                  # everything, on the CPU (and CUDA in cuda builds)
//! INFERD_BENCH_QUICK=1 cargo bench             # a few minutes: fewer sizes, shorter timings
//! cargo bench -- trees/                        # one family
//! cargo bench --features cuda                  # with every CUDA GPU present
//! ```
//!
//! On a machine or build without a GPU the GPU groups are skipped, and the run says so at its
//! start and end. Run `models/fetch-models.sh` first. `benches/*.py` compare with the peers
//! (XGBoost, LightGBM, sentence-transformers, llama.cpp) side by side.

#![allow(clippy::unwrap_used, missing_docs)]

mod classical;
mod common;
mod embeddings;
mod generation;

use criterion::Criterion;

fn main() {
    let mut suite = common::Suite::start();
    let mut criterion = Criterion::default().configure_from_args();
    classical::bench(&mut criterion, &mut suite);
    embeddings::bench(&mut criterion, &mut suite);
    generation::bench(&mut criterion, &mut suite);
    criterion.final_summary();
    suite.finish();
}
