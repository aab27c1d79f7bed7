//! What ntex-mqtt's decoders get wrong, done on a packet's raw bytes before they see it.
//!
//! - **Checks they omit.** CONNECT: Will QoS or Will Retain without the Will Flag
//!   [MQTT-3.1.2-13/-15], an MQTT 3.1.1 password without a user name [MQTT-3.1.2-22],
//!   bytes after the last field [MQTT-3.1.3-1]. SUBSCRIBE: reserved bits of the
//!   subscription options [MQTT-3.8.3-4] (MQTT 5: -5). The decoders drop these bits and
//!   ignore trailing bytes, so what they return cannot tell.
//! - **A value they refuse.** An MQTT 5 Message Expiry Interval of 0 (a PUBLISH's, or a
//!   will's in CONNECT) is decoded as `NonZeroU32` and the packet refused as malformed,
//!   although the specification allows any Four Byte Integer. Mosquitto takes 0 as no
//!   expiry at all: it delivers, keeps retained and forwards such a message without the
//!   property, exactly as if it were absent. So does the broker, by removing the
//!   property (and fixing the lengths) before decoding.
//!
//! Each function looks only as far as it must. Bytes it cannot make sense of are left
//! to the decoder, whose error is the answer: these functions refuse only what they
//! are sure of.

use ntex_bytes::BytesMut;

/// Property 0x02, Message Expiry Interval (a Four Byte Integer).
const MESSAGE_EXPIRY: u8 = 0x02;

/// A cursor over a packet's bytes; `None` from any read means "ran out".
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn u8(&mut self) -> Option<u8> {
        let b = *self.buf.get(self.at)?;
        self.at += 1;
        Some(b)
    }

    fn skip(&mut self, n: usize) -> Option<()> {
        (self.buf.len() - self.at >= n).then(|| self.at += n)
    }

    fn u16(&mut self) -> Option<u16> {
        let b = self.buf.get(self.at..self.at + 2)?;
        self.at += 2;
        Some(u16::from_be_bytes([b[0], b[1]]))
    }

    /// A length-prefixed string or binary field.
    fn field(&mut self) -> Option<&'a [u8]> {
        let n = usize::from(self.u16()?);
        let start = self.at;
        self.skip(n)?;
        Some(&self.buf[start..self.at])
    }

    /// A Variable Byte Integer (at most four bytes).
    fn vbi(&mut self) -> Option<usize> {
        let mut n = 0usize;
        for i in 0..4 {
            let b = self.u8()?;
            n |= usize::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Some(n);
            }
        }
        None
    }

    fn done(&self) -> bool {
        self.at == self.buf.len()
    }
}

/// The fixed header read: a reader over the rest of the packet (the frame is complete,
/// `net/conn.rs` framed it).
fn body(frame: &[u8]) -> Option<Reader<'_>> {
    let mut r = Reader { buf: frame, at: 1 };
    r.vbi()?;
    Some(r)
}

/// Skips an MQTT 5 property block.
fn skip_properties(r: &mut Reader<'_>) -> Option<()> {
    let n = r.vbi()?;
    r.skip(n)
}

/// CONNECT: the flags agree with each other and the payload ends where the Remaining
/// Length does. `Err` says what is wrong; a packet it cannot read is `Ok` (the decoder
/// says why).
pub fn check_connect(frame: &[u8], v5: bool) -> Result<(), &'static str> {
    let Some(mut r) = body(frame) else {
        return Ok(());
    };
    // Protocol name (the decoder checks it says "MQTT") and level.
    if r.field().is_none() || r.u8().is_none() {
        return Ok(());
    }
    let Some(flags) = r.u8() else { return Ok(()) };
    let (will, will_qos, will_retain) = (flags & 0x04 != 0, (flags >> 3) & 3, flags & 0x20 != 0);
    let (password, user) = (flags & 0x40 != 0, flags & 0x80 != 0);
    if !will && will_qos != 0 {
        return Err("Will QoS set without the Will Flag [MQTT-3.1.2-13]");
    }
    if !will && will_retain {
        return Err("Will Retain set without the Will Flag [MQTT-3.1.2-15]");
    }
    // MQTT 5 allows a password alone (§3.1.2.9).
    if !v5 && password && !user {
        return Err("Password Flag set without the User Name Flag [MQTT-3.1.2-22]");
    }
    let walked = (|| {
        r.skip(2)?; // keep alive
        if v5 {
            skip_properties(&mut r)?;
        }
        r.field()?; // client id
        if will {
            if v5 {
                skip_properties(&mut r)?;
            }
            r.field()?; // will topic
            r.field()?; // will payload
        }
        if user {
            r.field()?;
        }
        if password {
            r.field()?;
        }
        Some(())
    })();
    if walked.is_some() && !r.done() {
        return Err("bytes after the CONNECT payload [MQTT-3.1.3-1]");
    }
    Ok(())
}

/// SUBSCRIBE: no reserved bit of any subscription options byte is set (MQTT 5: bits
/// 6–7; 3.1.1: bits 2–7).
pub fn check_subscribe(frame: &[u8], v5: bool) -> Result<(), &'static str> {
    let reserved = if v5 { 0b1100_0000 } else { 0b1111_1100 };
    let Some(mut r) = body(frame) else {
        return Ok(());
    };
    if r.skip(2).is_none() || (v5 && skip_properties(&mut r).is_none()) {
        return Ok(());
    }
    while !r.done() {
        let (Some(_), Some(options)) = (r.field(), r.u8()) else {
            return Ok(());
        };
        if options & reserved != 0 {
            return Err("reserved subscription option bits set [MQTT-3.8.3-4]");
        }
    }
    Ok(())
}

/// The size of the value of MQTT 5 property `id` at the reader (MQTT 5 §2.2.2.2);
/// `None` for an unknown one or one that runs out.
fn property_value_len(id: u8, r: &mut Reader<'_>) -> Option<usize> {
    let start = r.at;
    match id {
        0x01 | 0x17 | 0x19 | 0x24 | 0x25 | 0x28 | 0x29 | 0x2A => r.skip(1)?,
        0x13 | 0x21 | 0x22 | 0x23 => r.skip(2)?,
        0x02 | 0x11 | 0x18 | 0x27 => r.skip(4)?,
        0x0B => {
            r.vbi()?;
        }
        0x03 | 0x08 | 0x09 | 0x12 | 0x15 | 0x16 | 0x1A | 0x1C | 0x1F => {
            r.field()?;
        }
        0x26 => {
            r.field()?;
            r.field()?;
        }
        _ => return None,
    }
    Some(r.at - start)
}

/// Where the property block at the reader holds a Message Expiry Interval of 0: the
/// block's start (its length) and the property's offset. Leaves the reader after the
/// block.
fn find_zero_expiry(r: &mut Reader<'_>) -> Option<Option<(usize, usize)>> {
    let block = r.at;
    let len = r.vbi()?;
    let end = r.at.checked_add(len).filter(|&e| e <= r.buf.len())?;
    let mut found = None;
    while r.at < end {
        let at = r.at;
        let id = r.u8()?;
        property_value_len(id, r)?;
        if id == MESSAGE_EXPIRY && found.is_none() && r.buf[at + 1..r.at] == [0, 0, 0, 0] {
            found = Some((block, at));
        }
    }
    (r.at == end).then_some(found)
}

fn put_vbi(out: &mut BytesMut, mut n: usize) {
    loop {
        let b = (n % 128) as u8;
        n /= 128;
        out.extend_from_slice(&[if n > 0 { b | 0x80 } else { b }]);
        if n == 0 {
            return;
        }
    }
}

fn vbi_len(n: usize) -> usize {
    match n {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// `frame` without the 5-byte property at `prop` of the block whose length is at
/// `block`: both that length and the Remaining Length shrink.
fn without_property(frame: &[u8], block: usize, prop: usize) -> Option<BytesMut> {
    let mut r = Reader { buf: frame, at: 1 };
    let remaining = r.vbi()?;
    let header_end = r.at;
    let mut b = Reader {
        buf: frame,
        at: block,
    };
    let block_len = b.vbi()?;
    let block_body = b.at;
    let new_block_len = block_len - 5;
    let new_remaining = remaining - 5 - (block_body - block) + vbi_len(new_block_len);
    let mut out = BytesMut::with_capacity(frame.len());
    out.extend_from_slice(&frame[..1]);
    put_vbi(&mut out, new_remaining);
    out.extend_from_slice(&frame[header_end..block]);
    put_vbi(&mut out, new_block_len);
    out.extend_from_slice(&frame[block_body..prop]);
    out.extend_from_slice(&frame[prop + 5..]);
    Some(out)
}

/// An MQTT 5 PUBLISH or CONNECT carrying Message Expiry Interval 0, rewritten without
/// that property (see the module's comment); `None` for any other packet, which goes
/// to the decoder as it is.
pub fn without_zero_expiry(frame: &[u8]) -> Option<BytesMut> {
    let first = *frame.first()?;
    let mut r = body(frame)?;
    let found = match first >> 4 {
        3 => {
            let qos = (first >> 1) & 3;
            r.field()?; // topic
            if qos != 0 {
                r.skip(2)?; // packet id
            }
            find_zero_expiry(&mut r)?
        }
        1 => {
            r.field()?; // protocol name
            if r.u8()? != 5 {
                return None;
            }
            let flags = r.u8()?;
            if flags & 0x04 == 0 {
                return None;
            }
            r.skip(2)?; // keep alive
            skip_properties(&mut r)?;
            r.field()?; // client id
            find_zero_expiry(&mut r)? // will properties
        }
        _ => return None,
    };
    let (block, prop) = found?;
    without_property(frame, block, prop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(header: u8, body: &[u8]) -> Vec<u8> {
        let mut p = vec![header];
        let mut out = BytesMut::new();
        put_vbi(&mut out, body.len());
        p.extend_from_slice(&out);
        p.extend_from_slice(body);
        p
    }

    #[test]
    fn a_zero_expiry_is_cut_out_of_a_publish_and_the_lengths_follow() {
        // QoS 1, topic "t", id 7, properties: expiry 0, payload format 1; payload "x".
        let with = packet(0x32, b"\0\x01t\0\x07\x07\x02\0\0\0\0\x01\x01x".as_slice());
        let without = packet(0x32, b"\0\x01t\0\x07\x02\x01\x01x".as_slice());
        assert_eq!(without_zero_expiry(&with).as_deref(), Some(&without[..]));
        // A non-zero expiry, or none, is left alone.
        let five = packet(0x30, b"\0\x01t\x05\x02\0\0\0\x05x".as_slice());
        assert_eq!(without_zero_expiry(&five), None);
        assert_eq!(without_zero_expiry(&without), None);
    }

    #[test]
    fn the_remaining_length_may_shrink_by_a_byte() {
        // 128 bytes of body: a two-byte Remaining Length, one byte after the cut.
        let payload = vec![b'p'; 128 - 3 - 6];
        let body = [&b"\0\x01t\x05\x02\0\0\0\0"[..], &payload].concat();
        assert_eq!(body.len(), 128);
        let with = packet(0x30, &body);
        let fixed = without_zero_expiry(&with).unwrap();
        let expected = packet(0x30, &[&b"\0\x01t\0"[..], &payload].concat());
        assert_eq!(&fixed[..], &expected[..]);
    }

    #[test]
    fn a_wills_zero_expiry_is_cut_out_of_connect() {
        // Flags 0x06 (will, clean start), no connect properties, client id "c",
        // will properties: expiry 0; will topic "w", payload "b".
        let head = b"\0\x04MQTT\x05\x06\0\x3c\0\0\x01c";
        let with = packet(
            0x10,
            &[&head[..], b"\x05\x02\0\0\0\0\0\x01w\0\x01b"].concat(),
        );
        let without = packet(0x10, &[&head[..], b"\0\0\x01w\0\x01b"].concat());
        assert_eq!(without_zero_expiry(&with).as_deref(), Some(&without[..]));
    }

    #[test]
    fn connect_flags_and_length_are_checked() {
        let v3 = |flags: u8, payload: &[u8]| {
            packet(
                0x10,
                &[&b"\0\x04MQTT\x04"[..], &[flags, 0, 60], payload].concat(),
            )
        };
        assert_eq!(check_connect(&v3(0x02, b"\0\x01c"), false), Ok(()));
        assert!(
            check_connect(&v3(0x0A, b"\0\x01c"), false).is_err(),
            "will QoS"
        );
        assert!(
            check_connect(&v3(0x22, b"\0\x01c"), false).is_err(),
            "will retain"
        );
        assert!(check_connect(&v3(0x42, b"\0\x01c\0\x01p"), false).is_err());
        let v5 = packet(0x10, b"\0\x04MQTT\x05\x42\0\x3c\0\0\x01c\0\x01p");
        assert_eq!(check_connect(&v5, true), Ok(()), "MQTT 5: a password alone");
        assert!(
            check_connect(&v3(0x02, b"\0\x01c\0"), false).is_err(),
            "trailing"
        );
        // Cut short: the decoder's to refuse.
        assert_eq!(check_connect(&v3(0x82, b"\0\x01c"), false), Ok(()));
    }

    #[test]
    fn reserved_subscription_option_bits_are_refused() {
        let sub = |v5: bool, opts: u8| {
            let props: &[u8] = if v5 { b"\0" } else { b"" };
            packet(0x82, &[&b"\0\x01"[..], props, b"\0\x01a", &[opts]].concat())
        };
        assert_eq!(check_subscribe(&sub(true, 0x2E), true), Ok(()));
        assert!(check_subscribe(&sub(true, 0x40), true).is_err());
        assert_eq!(check_subscribe(&sub(false, 0x02), false), Ok(()));
        assert!(check_subscribe(&sub(false, 0x04), false).is_err());
    }
}
