//! Hardening tests (issue 17): see the items named in each test.
