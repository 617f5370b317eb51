//! Enumerations that are stored and sent as lowercase words.
//!
//! [`text_enum!`] defines one: the enum, its words (`as_str`, `FromStr`, serde, JSON Schema)
//! and the list of every variant (`ALL`). [`sqlx_text!`] maps a type with `as_str` and
//! `FromStr` to a PostgreSQL `text` column (or a domain over `text`) when the `sqlx` feature
//! is on, so a row field is the enum itself and a misspelt state is a compile error rather
//! than a row that no query finds.

/// A word that names no variant of a [`text_enum!`] type.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}; expected one of: {expected}")]
pub struct UnknownWord {
    pub what: &'static str,
    pub value: String,
    pub expected: &'static str,
}

/// Defines an enum of lowercase words:
///
/// ```
/// messaging_core::text_enum! {
///     /// Doc of the enum.
///     pub enum Colour("colour") { Red = "red", DarkBlue = "dark_blue" }
/// }
/// assert_eq!("dark_blue".parse::<Colour>().unwrap(), Colour::DarkBlue);
/// assert_eq!(Colour::ALL.len(), 2);
/// ```
#[macro_export]
macro_rules! text_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident($what:literal) {
            $( $(#[$vmeta:meta])* $variant:ident = $word:literal ),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord,
            serde::Serialize, serde::Deserialize, schemars::JsonSchema,
        )]
        pub enum $name {
            $( $(#[$vmeta])* #[serde(rename = $word)] $variant, )+
        }

        impl $name {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The word as stored and sent.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $word,)+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = $crate::text_enum::UnknownWord;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($word => Ok($name::$variant),)+
                    _ => Err($crate::text_enum::UnknownWord {
                        what: $what,
                        value: s.to_owned(),
                        expected: concat!($($word, " "),+),
                    }),
                }
            }
        }

        $crate::sqlx_text!($name);
    };
}

/// Maps a type with `as_str()` and `FromStr` to PostgreSQL `text` (and `text[]`), and to
/// domains over `text` (the channel columns use one). Expands to nothing without the `sqlx`
/// feature.
#[cfg(feature = "sqlx")]
#[macro_export]
macro_rules! sqlx_text {
    ($name:ty) => {
        impl $crate::text_enum::sqlx::Type<$crate::text_enum::sqlx::Postgres> for $name {
            fn type_info() -> $crate::text_enum::sqlx::postgres::PgTypeInfo {
                <&str as $crate::text_enum::sqlx::Type<$crate::text_enum::sqlx::Postgres>>::type_info()
            }

            fn compatible(ty: &$crate::text_enum::sqlx::postgres::PgTypeInfo) -> bool {
                $crate::text_enum::text_compatible(ty)
            }
        }

        impl $crate::text_enum::sqlx::postgres::PgHasArrayType for $name {
            fn array_type_info() -> $crate::text_enum::sqlx::postgres::PgTypeInfo {
                <&str as $crate::text_enum::sqlx::postgres::PgHasArrayType>::array_type_info()
            }

            fn array_compatible(ty: &$crate::text_enum::sqlx::postgres::PgTypeInfo) -> bool {
                <&str as $crate::text_enum::sqlx::postgres::PgHasArrayType>::array_compatible(ty)
            }
        }

        impl<'q> $crate::text_enum::sqlx::Encode<'q, $crate::text_enum::sqlx::Postgres> for $name {
            fn encode_by_ref(
                &self,
                buf: &mut $crate::text_enum::sqlx::postgres::PgArgumentBuffer,
            ) -> Result<$crate::text_enum::sqlx::encode::IsNull, $crate::text_enum::sqlx::error::BoxDynError>
            {
                <&str as $crate::text_enum::sqlx::Encode<'_, $crate::text_enum::sqlx::Postgres>>::encode(
                    self.as_str(),
                    buf,
                )
            }
        }

        impl<'r> $crate::text_enum::sqlx::Decode<'r, $crate::text_enum::sqlx::Postgres> for $name {
            fn decode(
                value: $crate::text_enum::sqlx::postgres::PgValueRef<'r>,
            ) -> Result<Self, $crate::text_enum::sqlx::error::BoxDynError> {
                let word = <&str as $crate::text_enum::sqlx::Decode<'r, $crate::text_enum::sqlx::Postgres>>::decode(value)?;
                Ok(word.parse::<$name>()?)
            }
        }
    };
}

#[cfg(not(feature = "sqlx"))]
#[macro_export]
macro_rules! sqlx_text {
    ($name:ty) => {};
}

#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub use sqlx;

/// `text`, its relatives, and domains over them.
#[cfg(feature = "sqlx")]
#[doc(hidden)]
pub fn text_compatible(ty: &sqlx::postgres::PgTypeInfo) -> bool {
    use sqlx::postgres::PgTypeKind;
    <&str as sqlx::Type<sqlx::Postgres>>::compatible(ty)
        || matches!(ty.kind(), PgTypeKind::Domain(base) if text_compatible(base))
}
