//! Mail authentication for ferry, on top of mail-auth (Stalwart's SPF, DKIM, DMARC and ARC):
//!
//! - [`arc`]: ARC sets for mail ferry forwards;
//! - [`keys`]: the DKIM signing keys under `control/dkim/DOMAIN/SELECTOR.key`;
//! - [`records`]: new keys and the DNS records that publish them (`ferryctl dkim`);
//! - [`spf`]: one SPF evaluation with its explanation (`ferryctl spf`, `ferryctl check`);
//! - [`sign`]: DKIM-Signature fields for a message from one of our domains;
//! - [`verify`]: the verdict and the Authentication-Results field of a received message.

pub mod arc;
pub mod keys;
pub mod records;
pub mod sign;
pub mod spf;
pub mod verify;
