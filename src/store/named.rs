//! An optional stored name (NULL where a row has none) decoded into the enum it names:
//! `#[sqlx(try_from = "StoredName")]` on an `Option<T>` field (any `T` read from a
//! `String`), so no row carries such a
//! name as a string.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::error::BoxDynError;
use sqlx::{Decode, Type};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredName(Option<String>);

impl Type<Any> for StoredName {
    fn type_info() -> AnyTypeInfo {
        <String as Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <String as Type<Any>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Any> for StoredName {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        Ok(StoredName(<Option<String> as Decode<'r, Any>>::decode(value)?))
    }
}

impl<T: TryFrom<String>> TryFrom<StoredName> for Option<T> {
    type Error = T::Error;

    fn try_from(stored: StoredName) -> Result<Option<T>, T::Error> {
        stored.0.map(T::try_from).transpose()
    }
}
