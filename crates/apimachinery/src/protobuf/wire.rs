//! The protobuf wire format, read-only: tags, varints, fixed32/64 and length-delimited
//! fields. Just enough of the encoding to walk Kubernetes messages without a protobuf crate.

use super::ProtoError;

/// One field value as it sits on the wire; the schema decides what it means.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum WireValue<'a> {
    Varint(u64),
    Fixed64(u64),
    Fixed32(u32),
    Bytes(&'a [u8]),
}

impl WireValue<'_> {
    /// The wire type's name, for error messages.
    pub(crate) fn wire_name(&self) -> &'static str {
        match self {
            WireValue::Varint(_) => "varint",
            WireValue::Fixed64(_) => "fixed64",
            WireValue::Fixed32(_) => "fixed32",
            WireValue::Bytes(_) => "length-delimited",
        }
    }
}

/// Reads the top-level fields of one message, in wire order.
pub(crate) struct FieldReader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> FieldReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        FieldReader { buf, pos: 0 }
    }

    /// Reads a varint at the cursor. Varints longer than ten bytes are rejected rather than
    /// silently wrapped, as Go's generated code does.
    pub(crate) fn varint(&mut self) -> Result<u64, ProtoError> {
        let mut value: u64 = 0;
        for shift in (0..64).step_by(7) {
            let Some(&b) = self.buf.get(self.pos) else {
                return Err(self.malformed("truncated varint"));
            };
            self.pos += 1;
            value |= u64::from(b & 0x7f) << shift;
            if b < 0x80 {
                return Ok(value);
            }
        }
        Err(self.malformed("varint longer than 10 bytes"))
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], ProtoError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&end| end <= self.buf.len())
            .ok_or_else(|| {
                self.malformed(&format!(
                    "{what} of {n} bytes runs past the end ({} left)",
                    self.buf.len() - self.pos
                ))
            })?;
        let out = &self.buf[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn malformed(&self, reason: &str) -> ProtoError {
        ProtoError::Malformed {
            path: String::new(),
            reason: format!("{reason} at byte {}", self.pos),
        }
    }

    /// The next (field number, value), or `None` at the end of the message.
    pub(crate) fn next_field(&mut self) -> Result<Option<(u32, WireValue<'a>)>, ProtoError> {
        if self.pos >= self.buf.len() {
            return Ok(None);
        }
        let key = self.varint()?;
        let number = key >> 3;
        if number == 0 || number > u64::from(u32::MAX >> 3) {
            return Err(self.malformed(&format!("illegal field number {number}")));
        }
        let value = match key & 7 {
            0 => WireValue::Varint(self.varint()?),
            1 => {
                let b = self.take(8, "fixed64")?;
                WireValue::Fixed64(u64::from_le_bytes(b.try_into().expect("8 bytes")))
            }
            2 => {
                let len = self.varint()?;
                let len = usize::try_from(len)
                    .map_err(|_| self.malformed(&format!("length {len} too large")))?;
                WireValue::Bytes(self.take(len, "length-delimited field")?)
            }
            5 => {
                let b = self.take(4, "fixed32")?;
                WireValue::Fixed32(u32::from_le_bytes(b.try_into().expect("4 bytes")))
            }
            // Groups (3, 4) are proto1 leftovers that go-to-protobuf never generates.
            other => {
                return Err(
                    self.malformed(&format!("unsupported wire type {other} for field {number}"))
                )
            }
        };
        Ok(Some((number as u32, value)))
    }

    /// True once the cursor has consumed the whole buffer (packed runs end here).
    pub(crate) fn at_end(&self) -> bool {
        self.pos >= self.buf.len()
    }

    /// Every field of the message; a malformed tail is an error, not a short list.
    pub(crate) fn all(buf: &'a [u8]) -> Result<Vec<(u32, WireValue<'a>)>, ProtoError> {
        let mut reader = FieldReader::new(buf);
        let mut out = Vec::new();
        while let Some(field) = reader.next_field()? {
            out.push(field);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_wire_type() {
        // field 1 varint 300, field 2 fixed64 1, field 3 bytes "hi", field 4 fixed32 7
        let buf = [
            0x08, 0xac, 0x02, 0x11, 1, 0, 0, 0, 0, 0, 0, 0, 0x1a, 2, b'h', b'i', 0x25, 7, 0, 0, 0,
        ];
        let fields = FieldReader::all(&buf).unwrap();
        assert_eq!(
            fields,
            vec![
                (1, WireValue::Varint(300)),
                (2, WireValue::Fixed64(1)),
                (3, WireValue::Bytes(b"hi")),
                (4, WireValue::Fixed32(7)),
            ]
        );
    }

    #[test]
    fn rejects_truncation_groups_and_long_varints() {
        assert!(FieldReader::all(&[0x0a, 5, b'a']).is_err());
        assert!(FieldReader::all(&[0x08]).is_err());
        assert!(FieldReader::all(&[0x0b]).is_err()); // start group
        assert!(FieldReader::all(&[
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1
        ])
        .is_err());
        assert!(FieldReader::all(&[0x00, 0x00]).is_err()); // field number 0
    }

    #[test]
    fn negative_int32_is_a_ten_byte_varint() {
        let buf = [
            0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01,
        ];
        let fields = FieldReader::all(&buf).unwrap();
        assert_eq!(fields, vec![(1, WireValue::Varint(u64::MAX))]);
    }
}
