//! Typed saga inputs of the examples.
//!
//! Every step of a saga receives the saga's input; each handler deserializes
//! it into the type of its saga. Every field has a realistic default, so
//! `{}` is a valid input for any example, and unknown fields (such as
//! `faults`) are ignored.

use serde::{Deserialize, Serialize};

/// Input of `deploy_environment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct DeployInput {
    /// Environment name, e.g. `staging` or `pr-1234`.
    pub environment: String,
    /// Container image to deploy.
    pub image: String,
    /// Number of replicas (at least 1).
    pub replicas: u32,
    /// Region to deploy into.
    pub region: String,
    /// Public host name; defaults to `<environment>.preview.example.dev`.
    pub domain: Option<String>,
}

impl Default for DeployInput {
    fn default() -> Self {
        Self {
            environment: "staging".into(),
            image: "ghcr.io/acme/shop:1.4.2".into(),
            replicas: 2,
            region: "eu-west-1".into(),
            domain: None,
        }
    }
}

impl DeployInput {
    /// Public host name of the environment.
    pub fn host(&self) -> String {
        self.domain
            .clone()
            .unwrap_or_else(|| format!("{}.preview.example.dev", self.environment))
    }
}

/// A customer, shared by the booking and payment examples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct Customer {
    /// Customer id in the CRM.
    pub id: String,
    /// Display name.
    pub name: String,
    /// E-mail address.
    pub email: String,
    /// Phone number in E.164 form.
    pub phone: String,
    /// Tax id printed on fiscal notes and invoices.
    pub tax_id: String,
}

impl Default for Customer {
    fn default() -> Self {
        Self {
            id: "cus_1001".into(),
            name: "Ana Souza".into(),
            email: "ana@example.com".into(),
            phone: "+5511987654321".into(),
            tax_id: "123.456.789-09".into(),
        }
    }
}

/// Input of `create_booking`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct BookingInput {
    /// Booking reference.
    pub booking_id: String,
    /// Who booked.
    pub customer: Customer,
    /// What was booked.
    pub service_name: String,
    /// Start time (RFC 3339).
    pub starts_at: String,
    /// Duration in minutes.
    pub duration_min: u32,
    /// Price in cents.
    pub amount_cents: u64,
    /// ISO 4217 currency code.
    pub currency: String,
}

impl Default for BookingInput {
    fn default() -> Self {
        Self {
            booking_id: "bk_2001".into(),
            customer: Customer::default(),
            service_name: "haircut".into(),
            starts_at: "2030-07-01T10:00:00-03:00".into(),
            duration_min: 45,
            amount_cents: 12_000,
            currency: "BRL".into(),
        }
    }
}

/// Input of `collect_payment`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct PaymentInput {
    /// Order being paid.
    pub order_id: String,
    /// Who pays.
    pub customer: Customer,
    /// Amount in cents (must be positive).
    pub amount_cents: u64,
    /// ISO 4217 currency code.
    pub currency: String,
    /// Tokenized payment method.
    pub payment_method: String,
}

impl Default for PaymentInput {
    fn default() -> Self {
        Self {
            order_id: "ord_3001".into(),
            customer: Customer::default(),
            amount_cents: 4_990,
            currency: "USD".into(),
            payment_method: "pm_card_visa_4242".into(),
        }
    }
}

/// Input of `data_ingest_pipeline`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct IngestInput {
    /// Dataset name in the catalog.
    pub dataset: String,
    /// Where to fetch the raw data from.
    pub source_url: String,
    /// Raw format (`csv`, `jsonl`, `pdf`, ...).
    pub format: String,
    /// Embedding model.
    pub embedding_model: String,
    /// Characters per chunk when parsing.
    pub chunk_size: u32,
}

impl Default for IngestInput {
    fn default() -> Self {
        Self {
            dataset: "support-tickets-2030-q2".into(),
            source_url: "s3://acme-raw/support/tickets-2030-q2.csv".into(),
            format: "csv".into(),
            embedding_model: "text-embedding-small".into(),
            chunk_size: 800,
        }
    }
}
