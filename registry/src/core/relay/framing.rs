//! TURN over a byte stream (TCP, or WebSocket binary frames): where one
//! message ends and the next begins (RFC 8656 §12.5). A frame is a STUN
//! message (20-byte header whose length says the rest) or a ChannelData
//! message (4-byte header, then the data). The headers are read by
//! stun-types and turn-types; this file only cuts.
//!
//! **Padding.** On a stream, ChannelData is padded to a multiple of 4 bytes
//! with zeros, but some clients leave it out. After a ChannelData whose
//! length is not a multiple of 4, up to `4 - len % 4` zero bytes may follow.
//! A zero byte there is padding unless a STUN message starts at it, which
//! the magic cookie tells: it sits at bytes 4-7 of a message, and a cookie
//! one to three bytes further on (padding, then a message) cannot also be
//! one there. Neither frame starts with two zero bytes, and a zero followed
//! by 0x40-0x4F is padding before a ChannelData (no STUN method we know has
//! that type), so those need no cookie. Padded and unpadded senders are
//! both understood, in both directions, whatever the chunking.
//!
//! **Bounds.** A stream never holds more than one unfinished frame:
//! [`MAX_FRAME`] bytes at most. Anything that cannot start a frame is
//! garbage, and the stream is closed by the caller.

use stun_types::message::{MAGIC_COOKIE, MessageHeader, StunParseError};
use turn_types::channel::ChannelData;

/// The highest channel number (RFC 8656 §12: 0x4000-0x4FFF).
pub(super) const CHANNEL_MAX: u16 = 0x4fff;

/// The largest frame: a STUN message with the largest length field.
pub(super) const MAX_FRAME: usize = MessageHeader::LENGTH + u16::MAX as usize;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum FrameKind {
    Stun,
    ChannelData,
}

/// What the bytes at the head of a stream are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Cut {
    /// A complete frame of `len` bytes, after which up to `padding` zero
    /// bytes may follow.
    Frame { kind: FrameKind, len: usize, padding: usize },
    /// One byte of padding to drop.
    Padding,
    /// Not enough bytes to tell.
    NeedMore,
    /// Cannot be the start of a frame.
    Garbage,
}

/// Reads the head of `data`, where up to `padding` padding bytes may still
/// come before the next frame.
pub(super) fn cut(data: &[u8], padding: usize) -> Cut {
    let Some(&first) = data.first() else { return Cut::NeedMore };
    if padding > 0 && first == 0 {
        match data.get(1) {
            None => return Cut::NeedMore,
            Some(0 | 0x40..=0x4f) => return Cut::Padding,
            Some(_) => match data.get(4..8) {
                None => return Cut::NeedMore,
                Some(cookie) if cookie == MAGIC_COOKIE.to_be_bytes() => {}
                Some(_) => return Cut::Padding,
            },
        }
    }
    match first >> 6 {
        // No STUN method is 0: two zero bytes start nothing.
        0 if data.get(1) == Some(&0) => Cut::Garbage,
        0 => match MessageHeader::from_bytes(data) {
            Ok(header) => {
                let body = usize::from(header.data_length());
                if body % 4 != 0 {
                    return Cut::Garbage;
                }
                let len = MessageHeader::LENGTH + body;
                if data.len() < len { Cut::NeedMore } else { Cut::Frame { kind: FrameKind::Stun, len, padding: 0 } }
            }
            Err(StunParseError::Truncated { .. }) => Cut::NeedMore,
            Err(_) => Cut::Garbage,
        },
        1 if first > 0x4f => Cut::Garbage,
        1 => match ChannelData::parse_header(data) {
            // 0x5000-0x7FFF are reserved, not channels (RFC 8656 §12).
            Ok((id, _)) if id > CHANNEL_MAX => Cut::Garbage,
            Ok((_, body)) => {
                let len = 4 + body;
                let padding = (4 - body % 4) % 4;
                if data.len() < len { Cut::NeedMore } else { Cut::Frame { kind: FrameKind::ChannelData, len, padding } }
            }
            Err(StunParseError::Truncated { .. }) => Cut::NeedMore,
            Err(_) => Cut::Garbage,
        },
        _ => Cut::Garbage,
    }
}

/// What one stream has received but not yet used.
#[derive(Debug, Default)]
pub(super) struct StreamBuffer {
    /// The head of an unfinished frame (at most [`MAX_FRAME`] bytes).
    pub pending: Vec<u8>,
    /// Padding bytes that may still follow the last ChannelData.
    pub padding: usize,
}

/// Splits stream bytes into frames and hands each to `on_frame`; what is
/// left of an unfinished frame stays in `buffer`. `Err(())` when the
/// stream carries garbage; `buffer` is then of no further use.
pub(super) fn feed(
    buffer: &mut StreamBuffer,
    mut input: &[u8],
    mut on_frame: impl FnMut(FrameKind, &[u8]),
) -> Result<(), ()> {
    while !buffer.pending.is_empty() && !input.is_empty() {
        // Complete the unfinished frame: it is shorter than MAX_FRAME, so
        // filling up to MAX_FRAME always completes it or runs out of input.
        let room = MAX_FRAME.saturating_sub(buffer.pending.len()).max(1);
        let n = room.min(input.len());
        buffer.pending.extend_from_slice(&input[..n]);
        input = &input[n..];
        let mut pending = std::mem::take(&mut buffer.pending);
        let used = cut_all(&pending, &mut buffer.padding, &mut on_frame);
        let used = match used {
            Ok(used) => used,
            Err(()) => return Err(()),
        };
        pending.drain(..used);
        buffer.pending = pending;
        if buffer.pending.len() >= MAX_FRAME {
            return Err(());
        }
    }
    if buffer.pending.is_empty() && !input.is_empty() {
        let used = cut_all(input, &mut buffer.padding, &mut on_frame)?;
        buffer.pending.extend_from_slice(&input[used..]);
    }
    if buffer.pending.is_empty() && buffer.pending.capacity() > 4096 {
        buffer.pending = Vec::new();
    }
    Ok(())
}

/// Hands out every complete frame of `data`; returns how many bytes they
/// and their padding took.
fn cut_all(data: &[u8], padding: &mut usize, on_frame: &mut impl FnMut(FrameKind, &[u8])) -> Result<usize, ()> {
    let mut at = 0;
    loop {
        match cut(&data[at..], *padding) {
            Cut::Frame { kind, len, padding: after } => {
                on_frame(kind, &data[at..at + len]);
                at += len;
                *padding = after;
            }
            Cut::Padding => {
                at += 1;
                *padding -= 1;
            }
            Cut::NeedMore => return Ok(at),
            Cut::Garbage => return Err(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use stun_types::message::{Message, MessageWriteVec};
    use stun_types::prelude::*;

    fn stun(method: u16) -> Vec<u8> {
        stun_of(stun_types::message::MessageClass::Request, method)
    }

    fn stun_of(class: stun_types::message::MessageClass, method: u16) -> Vec<u8> {
        let mtype =
            stun_types::message::MessageType::from_class_method(class, stun_types::message::Method::new(method));
        let mut msg = Message::builder(mtype, 7.into(), MessageWriteVec::new());
        msg.add_attribute(&stun_types::attribute::Software::new("x").unwrap()).unwrap();
        msg.finish()
    }

    fn channel(id: u16, data: &[u8], padded: bool) -> Vec<u8> {
        let mut out = vec![0; 4 + data.len()];
        ChannelData::new(id, data).write_into_unchecked(&mut out);
        if padded {
            out.resize(out.len().next_multiple_of(4), 0);
        }
        out
    }

    /// Feeds `stream` in the given chunk sizes (cycled) and collects frames.
    fn frames(stream: &[u8], chunks: &[usize]) -> Result<Vec<(FrameKind, Vec<u8>)>, ()> {
        let mut buffer = StreamBuffer::default();
        let mut out = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < stream.len() {
            let n = chunks[i % chunks.len()].max(1).min(stream.len() - at);
            feed(&mut buffer, &stream[at..at + n], |k, f| out.push((k, f.to_vec())))?;
            at += n;
            i += 1;
        }
        Ok(out)
    }

    #[test]
    fn padded_and_unpadded_channel_data_with_any_chunking() {
        // Every padding length, followed by each kind of frame: requests
        // and indications start with 00 0x, where a zero byte could be
        // either; responses (the relay's direction) with 01 0x.
        use stun_types::message::MessageClass::{Error, Indication, Success};
        let payloads: Vec<Vec<u8>> = (0..9).map(|n| vec![0xab; n]).collect();
        let next_frames = [
            stun(0x001),
            stun(0x003),
            stun_of(Indication, 0x006),
            stun_of(Success, 0x008),
            stun_of(Error, 0x003),
            channel(0x4001, &[1, 2, 3], false),
            channel(0x4fff, &[], false),
        ];
        for padded in [true, false] {
            let mut stream = Vec::new();
            let mut expected = Vec::new();
            for p in &payloads {
                for next in &next_frames {
                    stream.extend(channel(0x4000, p, padded));
                    expected.push((FrameKind::ChannelData, channel(0x4000, p, false)));
                    stream.extend(next);
                    let kind = if next[0] >> 6 == 0 { FrameKind::Stun } else { FrameKind::ChannelData };
                    expected.push((kind, next.clone()));
                }
            }
            for chunks in [vec![stream.len()], vec![1], vec![2], vec![3], vec![5, 1, 7], vec![13, 2, 64, 1]] {
                assert_eq!(frames(&stream, &chunks).unwrap(), expected, "padded {padded} chunks {chunks:?}");
            }
        }
    }

    #[test]
    fn garbage_is_refused_at_once() {
        for bad in [
            &[0x80u8, 1, 2, 3][..],
            &[0xff; 40][..],
            // Two zero bytes where no padding may be.
            &[0, 0, 0, 8, 0x21, 0x12, 0xa4, 0x42][..],
            // A STUN header with a wrong magic cookie.
            &[0, 1, 0, 0, 1, 2, 3, 4, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // A length that is not a multiple of 4.
            &[0, 1, 0, 3, 0x21, 0x12, 0xa4, 0x42, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0][..],
            // Channel numbers 0x5000-0x7fff are not channels.
            &[0x50, 0, 0, 0][..],
        ] {
            assert_eq!(frames(bad, &[1]), Err(()), "{bad:?} byte by byte");
            assert_eq!(frames(bad, &[bad.len()]), Err(()), "{bad:?} at once");
        }
        // Three bytes of zero padding are the most there can be.
        let mut stream = channel(0x4000, &[1], true);
        stream.extend([0, 0, 0, 0]);
        assert_eq!(frames(&stream, &[stream.len()]), Err(()));
    }

    #[test]
    fn the_unfinished_frame_is_all_that_is_kept() {
        let mut buffer = StreamBuffer::default();
        let big = channel(0x4000, &vec![7; 65_535], false);
        let mut n = 0;
        // A huge chunk with many frames and the head of one more.
        let mut input = Vec::new();
        for _ in 0..20 {
            input.extend(&big);
        }
        input.extend(&big[..100]);
        feed(&mut buffer, &input, |_, _| n += 1).unwrap();
        assert_eq!((n, buffer.pending.len()), (20, 100));
        feed(&mut buffer, &big[100..], |_, f| assert_eq!(f.len(), big.len())).unwrap();
        assert!(buffer.pending.is_empty());
        assert!(buffer.pending.capacity() <= 4096, "a drained buffer gives its memory back");
        // A STUN message with the largest length fits exactly.
        let mut header = stun(0x001)[..20].to_vec();
        header[2..4].copy_from_slice(&[0xff, 0xfc]);
        feed(&mut buffer, &header, |_, _| unreachable!()).unwrap();
        assert!(buffer.pending.len() < MAX_FRAME);
    }
}
