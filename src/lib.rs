//! leadsync: change data capture from a contact-centric CRM schema to a lead-centric one.

pub mod decode;
pub mod lsn;

pub use lsn::Lsn;
