//! `booking-workers`: workers of the create_booking saga (invoicing, email, whatsapp, calendar).

use jetsaga_examples::runner::{self, Binary};
use jetsaga_examples::services;

fn main() -> anyhow::Result<()> {
    runner::main(Binary {
        name: "booking-workers",
        about: "workers of the create_booking saga (invoicing, email, whatsapp, calendar)",
        services: services::BOOKING,
    })
}
