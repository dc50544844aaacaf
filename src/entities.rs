//! sea-orm entities, one module per table (schema in the `migrations` crate).

pub mod account {
    //! Table `accounts`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "accounts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        pub daily_limit: Option<i32>,
        pub created_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod access_key {
    //! Table `access_keys`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "access_keys")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub access_key_id: String,
        pub account_id: String,
        pub secret: String,
        pub status: String,
        pub created_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact {
    //! Table `contacts`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contacts")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub account_id: String,
        pub name: String,
        pub email: String,
        pub title: String,
        pub message_types: String,
        pub phone: Option<String>,
        pub pending_phone: Option<String>,
        pub last_send_ms: Option<i64>,
        pub created_ms: i64,
        pub updated_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_member {
    //! Table `contact_members`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_members")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub member_id: String,
        pub account_id: String,
        pub modify_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod contact_deletion {
    //! Table `contact_deletions`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "contact_deletions")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub contact_id: String,
        pub account_id: String,
        pub status: String,
        pub message_types: String,
        pub deleted_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod send_request {
    //! Table `send_requests`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "send_requests")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub request_id: String,
        pub account_id: String,
        pub contact_id: String,
        pub phone: String,
        pub status: String,
        pub attempts: i32,
        pub ambiguous_attempts: i32,
        pub failure_code: Option<String>,
        pub failure_message: Option<String>,
        pub provider_message_id: Option<String>,
        pub verification_id: Option<String>,
        pub day: String,
        pub accepted_ms: i64,
        pub sent_ms: Option<i64>,
        pub updated_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod verification {
    //! Table `verifications`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "verifications")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub verification_id: String,
        pub account_id: String,
        pub contact_id: String,
        pub phone: String,
        pub status: String,
        pub failed_attempts: i32,
        pub created_ms: i64,
        pub expires_ms: i64,
        pub live_key: Option<String>,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod daily_counter {
    //! Table `daily_counters`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "daily_counters")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub account_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub day: String,
        pub count: i32,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod signature_nonce {
    //! Table `signature_nonces`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "signature_nonces")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub access_key_id: String,
        #[sea_orm(primary_key, auto_increment = false)]
        pub nonce: String,
        pub expires_ms: i64,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}

pub mod setting {
    //! Table `settings`.
    use sea_orm::entity::prelude::*;

    #[derive(Clone, Debug, PartialEq, Eq, DeriveEntityModel)]
    #[sea_orm(table_name = "settings")]
    pub struct Model {
        #[sea_orm(primary_key, auto_increment = false)]
        pub key: String,
        pub value: String,
    }

    #[derive(Copy, Clone, Debug, EnumIter, DeriveRelation)]
    pub enum Relation {}

    impl ActiveModelBehavior for ActiveModel {}
}
