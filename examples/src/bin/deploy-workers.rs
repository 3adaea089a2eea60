//! `deploy-workers`: workers of the deploy_environment saga (manifest, container-engine, gateway, environment).

use jetsaga_examples::runner::{self, Binary};
use jetsaga_examples::services;

fn main() -> anyhow::Result<()> {
    runner::main(Binary {
        name: "deploy-workers",
        about: "workers of the deploy_environment saga (manifest, container-engine, gateway, environment)",
        services: services::DEPLOY,
    })
}
