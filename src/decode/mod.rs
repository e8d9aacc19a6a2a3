//! pgoutput (logical replication protocol version 1) decoding: bytes → messages. Pure.
