//! The broker's MQTT packet path on arbitrary bytes from one connection.
//!
//! Exactly as `net/worker.rs` and `session.rs` take them: the broker cuts the stream into
//! packets with `net::conn::frame_len` at its default `max_packet_bytes` (1 MiB), picks
//! the protocol from the first packet (`v5::is_v5_connect`), decodes that CONNECT with a
//! fresh ntex-mqtt 9.0.0 codec and every later packet with one codec kept for the
//! connection. The first packet that does not decode closes the connection, so the
//! target stops there too.
//!
//! With `LENTERA_FUZZ_NTEX_STREAM=1`, a second pass feeds the same bytes to the codec the
//! way ntex's own server does — one stream, the codec's own framing,
//! `set_max_size`/`set_max_inbound_size` at the same limit — in chunks of varying sizes
//! (the input's last byte picks them). It is off by default because it stops at once on
//! a known ntex-mqtt 9.0.0 bug the broker cannot hit (docs/fuzzing.md: a PUBLISH whose
//! topic is longer than its Remaining Length underflows `remaining_length - hdr_len`
//! when more bytes follow in the buffer; the broker hands the codec exact frames).
//!
//! Properties: no panic or sanitizer report; a packet that decodes uses its whole frame
//! and no more bytes than its header announced; every decoded packet, encoded again by
//! the same codec, decodes to the same packet (and PUBLISH to the same payload).
#![no_main]

use std::sync::OnceLock;

use lentera_broker::net::conn::frame_len;
use lentera_broker::settings::BrokerSettings;
use lentera_broker::v5::is_v5_connect;
use libfuzzer_sys::fuzz_target;
use ntex_bytes::{BytePages, Bytes, BytesMut};
use ntex_codec::{Decoder, Encoder};
use ntex_mqtt::{v3, v5};

/// One decoded unit, either version.
#[derive(Debug, PartialEq)]
enum Unit {
    V3(v3::codec::Decoded),
    V5(v5::codec::Decoded),
}

#[derive(Clone, Copy, PartialEq)]
enum Version {
    V3,
    V5,
}

struct Codec {
    v3: v3::codec::Codec,
    v5: v5::codec::Codec,
    version: Version,
}

impl Codec {
    fn new(version: Version, max: u32) -> Self {
        let c = Codec {
            v3: v3::codec::Codec::new(),
            v5: v5::codec::Codec::new(),
            version,
        };
        c.v3.set_max_size(max);
        c.v5.set_max_inbound_size(max);
        c
    }

    fn decode(&self, src: &mut BytesMut) -> Result<Option<Unit>, String> {
        match self.version {
            Version::V3 => self.v3.decode(src).map(|d| d.map(Unit::V3)),
            Version::V5 => self.v5.decode(src).map(|d| d.map(Unit::V5)),
        }
        .map_err(|e| e.to_string())
    }
}

/// Re-encodes a whole packet and decodes it with a fresh codec: the same packet back.
fn round_trip(unit: &Unit) {
    let mut pages = BytePages::default();
    let encoded = match unit {
        Unit::V3(v3::codec::Decoded::Packet(p, _)) => v3::codec::Codec::new()
            .encodev(v3::codec::Encoded::Packet(p.clone()), &mut pages)
            .map_err(|e| e.to_string()),
        Unit::V3(v3::codec::Decoded::Publish(p, payload, _))
            if payload.len() as u32 == p.payload_size =>
        {
            v3::codec::Codec::new()
                .encodev(
                    v3::codec::Encoded::Publish(p.clone(), Some(payload.clone())),
                    &mut pages,
                )
                .map_err(|e| e.to_string())
        }
        Unit::V5(v5::codec::Decoded::Packet(p, _)) => v5::codec::Codec::new()
            .encodev(v5::codec::Encoded::Packet(p.clone()), &mut pages)
            .map_err(|e| e.to_string()),
        Unit::V5(v5::codec::Decoded::Publish(p, payload, _))
            if payload.len() as u32 == p.payload_size =>
        {
            v5::codec::Codec::new()
                .encodev(
                    v5::codec::Encoded::Publish(p.clone(), Some(payload.clone())),
                    &mut pages,
                )
                .map_err(|e| e.to_string())
        }
        // A payload split across chunks is not a whole packet.
        _ => return,
    };
    if let Err(e) = encoded {
        panic!("decoded {unit:?} but cannot encode it again: {e}");
    }
    let bytes: Bytes = pages.freeze();
    let version = match unit {
        Unit::V3(_) => Version::V3,
        Unit::V5(_) => Version::V5,
    };
    let mut buf = BytesMut::copy_from_slice(&bytes);
    let again = Codec::new(version, 0).decode(&mut buf);
    let again = match again {
        Ok(Some(u)) => u,
        other => panic!("{unit:?} encoded as {bytes:?} decodes as {other:?}"),
    };
    // The remaining length may differ (e.g. a property the encoder leaves out when it
    // is the default): compare what the packet says.
    match (unit, &again) {
        (
            Unit::V3(v3::codec::Decoded::Packet(a, _)),
            Unit::V3(v3::codec::Decoded::Packet(b, _)),
        ) => {
            assert_eq!(a, b)
        }
        (
            Unit::V3(v3::codec::Decoded::Publish(a, pa, _)),
            Unit::V3(v3::codec::Decoded::Publish(b, pb, _)),
        ) => assert_eq!((a, pa), (b, pb)),
        (
            Unit::V5(v5::codec::Decoded::Packet(a, _)),
            Unit::V5(v5::codec::Decoded::Packet(b, _)),
        ) => {
            assert_eq!(a, b)
        }
        (
            Unit::V5(v5::codec::Decoded::Publish(a, pa, _)),
            Unit::V5(v5::codec::Decoded::Publish(b, pb, _)),
        ) => assert_eq!((a, pa), (b, pb)),
        (a, b) => panic!("{a:?} came back as {b:?}"),
    }
    assert!(
        buf.is_empty(),
        "{} bytes left after a re-encoded packet",
        buf.len()
    );
}

/// The broker's own path: its framing, then the codec on one exact frame at a time.
fn broker_path(data: &[u8], max: usize) {
    let mut at = 0;
    let mut codec: Option<Codec> = None;
    while at < data.len() {
        let len = match frame_len(&data[at..], max) {
            Ok(Some(len)) => len,
            // Waits for more bytes, or closes the connection.
            Ok(None) | Err(_) => return,
        };
        assert!((2..=max).contains(&len) && at + len <= data.len());
        let mut frame = BytesMut::copy_from_slice(&data[at..at + len]);
        at += len;
        let decoded = match &codec {
            None => {
                let version = match is_v5_connect(&frame) {
                    Some(true) => Version::V5,
                    Some(false) => Version::V3,
                    None => return,
                };
                // CONNECT is decoded by a fresh codec; the connection keeps another one.
                let d = Codec::new(version, 0).decode(&mut frame);
                codec = Some(Codec::new(version, 0));
                d
            }
            Some(c) => c.decode(&mut frame),
        };
        match decoded {
            Ok(Some(unit)) => {
                assert!(
                    frame.is_empty(),
                    "{} bytes of a {len}-byte frame left after {unit:?}",
                    frame.len()
                );
                if let Unit::V3(v3::codec::Decoded::Publish(_, payload, _))
                | Unit::V5(v5::codec::Decoded::Publish(_, payload, _)) = &unit
                {
                    assert!(payload.len() < len);
                }
                round_trip(&unit);
            }
            // The broker closes the connection.
            Ok(None) | Err(_) => return,
        }
    }
}

/// ntex's own path: one stream, the codec's framing and size limit, uneven chunks.
fn stream_path(data: &[u8], chunking: u8, max: u32) {
    let version = if is_v5_connect(data) == Some(true) {
        Version::V5
    } else {
        Version::V3
    };
    let codec = Codec::new(version, max);
    let mut buf = BytesMut::new();
    let step = usize::from(chunking % 16) + 1;
    for chunk in data.chunks(step) {
        buf.extend_from_slice(chunk);
        loop {
            let before = buf.len();
            match codec.decode(&mut buf) {
                Ok(Some(_)) => assert!(buf.len() <= before),
                Ok(None) => break,
                Err(_) => return,
            }
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let max = BrokerSettings::default().max_packet_bytes;
    broker_path(data, max as usize);
    static STREAM: OnceLock<bool> = OnceLock::new();
    let stream = *STREAM.get_or_init(|| std::env::var_os("LENTERA_FUZZ_NTEX_STREAM").is_some());
    if stream && let Some(&chunking) = data.last() {
        stream_path(data, chunking, max);
    }
});
