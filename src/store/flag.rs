//! Booleans as both stores keep them: INTEGER 0 or 1. A row's `bool` field decodes
//! through [`StoredFlag`] (`#[sqlx(try_from = "StoredFlag")]`), so no caller compares a
//! stored flag with 1, and any other number is a decoding error rather than a guess.

use sqlx::any::{Any, AnyTypeInfo, AnyValueRef};
use sqlx::error::BoxDynError;
use sqlx::{Decode, Type};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StoredFlag(bool);

impl Type<Any> for StoredFlag {
    fn type_info() -> AnyTypeInfo {
        <i64 as Type<Any>>::type_info()
    }

    fn compatible(ty: &AnyTypeInfo) -> bool {
        <i64 as Type<Any>>::compatible(ty)
    }
}

impl<'r> Decode<'r, Any> for StoredFlag {
    fn decode(value: AnyValueRef<'r>) -> Result<Self, BoxDynError> {
        match <i64 as Decode<'r, Any>>::decode(value)? {
            0 => Ok(StoredFlag(false)),
            1 => Ok(StoredFlag(true)),
            other => Err(format!("{other} is not a stored boolean (0 or 1)").into()),
        }
    }
}

impl From<StoredFlag> for bool {
    fn from(flag: StoredFlag) -> bool {
        flag.0
    }
}
