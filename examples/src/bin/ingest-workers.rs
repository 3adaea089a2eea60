//! `ingest-workers`: workers of the data_ingest_pipeline saga (ingest, parser, embedder, catalog).

use jetsaga_examples::runner::{self, Binary};
use jetsaga_examples::services;

fn main() -> anyhow::Result<()> {
    runner::main(Binary {
        name: "ingest-workers",
        about: "workers of the data_ingest_pipeline saga (ingest, parser, embedder, catalog)",
        services: services::INGEST,
    })
}
