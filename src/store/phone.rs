//! Phone numbers as both stores keep them: E.164 text, or NULL or "" where a row has no
//! number. A row's phone field decodes through [`StoredPhone`]
//! (`#[sqlx(try_from = "StoredPhone")]`) into an `E164`, or an `Option<E164>` where the
//! number may be unknown, so no caller handles a stored number as a string.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::error::BoxDynError;
use sqlx::{Decode, Type};

use crate::domain::phone::{PhoneError, E164};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredPhone(Option<String>);

impl Type<Any> for StoredPhone {
    fn type_info() -> AnyTypeInfo {
        <String as Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <String as Type<Any>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Any> for StoredPhone {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        let text = <Option<String> as Decode<'r, Any>>::decode(value)?;
        Ok(StoredPhone(text.filter(|t| !t.is_empty())))
    }
}

/// A number the row must have.
impl TryFrom<StoredPhone> for E164 {
    type Error = PhoneError;

    fn try_from(stored: StoredPhone) -> Result<E164, PhoneError> {
        E164::from_row(stored.0.as_deref().unwrap_or_default())
    }
}

/// A number the row may lack (NULL or "").
impl TryFrom<StoredPhone> for Option<E164> {
    type Error = PhoneError;

    fn try_from(stored: StoredPhone) -> Result<Option<E164>, PhoneError> {
        stored.0.as_deref().map(E164::from_row).transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_numbers_decode_by_shape() {
        let some = |t: &str| StoredPhone(Some(t.into()));
        assert_eq!(
            E164::try_from(some("+447911123456")).map(|p| p.as_str().to_string()),
            Ok("+447911123456".into())
        );
        assert_eq!(E164::try_from(StoredPhone(None)), Err(PhoneError::Missing));
        assert_eq!(Option::<E164>::try_from(StoredPhone(None)), Ok(None));
        for bad in [
            "447911123456",
            "+44 7911",
            "+0447911123456",
            "+123456",
            "+1234567890123456",
            "+4479a1123456",
        ] {
            assert!(E164::try_from(some(bad)).is_err(), "{bad}");
            assert!(Option::<E164>::try_from(some(bad)).is_err(), "{bad}");
        }
    }
}
