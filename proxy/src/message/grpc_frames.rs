//! Counting gRPC messages in a body as it streams past (`istio_request_messages_total`,
//! `istio_response_messages_total`): each message is a 5-byte prefix (a compression flag
//! and a big-endian length) and that many bytes, and a data frame may hold any part of any
//! number of them. Nothing is buffered: the counter keeps at most the four length bytes
//! of a prefix split across frames.

/// The framing state of one direction of a gRPC stream.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GrpcFrames {
    /// Bytes of the current message's payload still to come.
    payload_left: u64,
    /// Bytes of the current prefix seen so far (0 = between messages).
    prefix_seen: u8,
    /// The length bytes of the current prefix.
    length: [u8; 4],
    /// Messages whose prefix has been read.
    messages: u64,
}

impl GrpcFrames {
    /// Reads `data`, the next bytes of the stream.
    pub fn feed(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            if self.payload_left > 0 {
                let n = usize::try_from(self.payload_left)
                    .unwrap_or(usize::MAX)
                    .min(data.len());
                self.payload_left -= n as u64;
                data = &data[n..];
                continue;
            }
            // In a prefix: byte 0 is the compression flag, bytes 1-4 the length.
            if self.prefix_seen > 0 {
                self.length[usize::from(self.prefix_seen) - 1] = data[0];
            }
            self.prefix_seen += 1;
            data = &data[1..];
            if self.prefix_seen == 5 {
                self.prefix_seen = 0;
                self.messages += 1;
                self.payload_left = u64::from(u32::from_be_bytes(self.length));
            }
        }
    }

    /// Messages begun so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(payload: &[u8]) -> Vec<u8> {
        let mut m = vec![0];
        m.extend_from_slice(&(payload.len() as u32).to_be_bytes());
        m.extend_from_slice(payload);
        m
    }

    #[test]
    fn messages_are_counted_however_the_stream_is_cut() {
        let mut stream = message(b"hello");
        stream.extend(message(b""));
        stream.extend(message(&[7; 300]));
        for cut in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut f = GrpcFrames::default();
            for chunk in stream.chunks(cut) {
                f.feed(chunk);
            }
            assert_eq!(f.messages(), 3, "chunks of {cut}");
            assert_eq!((f.prefix_seen, f.payload_left), (0, 0), "between messages");
        }
    }

    #[test]
    fn a_message_counts_once_its_prefix_is_read() {
        let mut f = GrpcFrames::default();
        f.feed(&[0, 0, 0]);
        assert_eq!(f.messages(), 0);
        f.feed(&[0, 10, 1, 2]);
        assert_eq!(f.messages(), 1, "the payload is still arriving");
    }
}
