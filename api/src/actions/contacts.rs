//! Contact operations: add, update, delete, get, list, pending targets, cancel, members.

use msgcontact::{
    ApiError,
    domain::{
        AccountId, ContactId, ContactName, EmailAddress, MemberId, MessageTypes, PhoneNumber, Title,
    },
    entities::{contact, contact_deletion, contact_member, verification},
    status::VerificationStatus,
    time::{format_ms, now_ms},
};
use sea_orm::{
    ActiveModelTrait,
    ActiveValue::Set,
    ColumnTrait, ConnectionTrait, DbErr, EntityTrait, PaginatorTrait, QueryFilter, QueryOrder,
    QuerySelect, SqlErr,
    sea_query::{Expr, OnConflict},
};
use serde_json::{Value, json};

use super::reply::{OpResult, obj};
use crate::{http::params::Params, state::AppState};

/// The contact of this account with this id, or `EntityNotExists.Contact`.
pub async fn find_contact<C: ConnectionTrait>(
    db: &C,
    account: &AccountId,
    id: &ContactId,
) -> Result<contact::Model, ApiError> {
    contact::Entity::find_by_id(id.as_str().to_owned())
        .filter(contact::Column::AccountId.eq(account.as_str()))
        .one(db)
        .await?
        .ok_or(ApiError::ContactNotFound)
}

pub fn contact_status(c: &contact::Model) -> &'static str {
    if c.pending_phone.is_some() {
        "Verifying"
    } else {
        "Active"
    }
}

fn contact_id(p: &Params) -> Result<ContactId, ApiError> {
    ContactId::parse(p.require("ContactId")?)
}

fn name_taken(e: DbErr) -> ApiError {
    match e.sql_err() {
        Some(SqlErr::UniqueConstraintViolation(_)) => ApiError::NameAlreadyUsed,
        _ => ApiError::from(e),
    }
}

async fn name_in_use<C: ConnectionTrait>(
    db: &C,
    account: &AccountId,
    name: &ContactName,
    except: Option<&str>,
) -> Result<bool, ApiError> {
    let mut q = contact::Entity::find()
        .filter(contact::Column::AccountId.eq(account.as_str()))
        .filter(contact::Column::Name.eq(name.as_str()));
    if let Some(id) = except {
        q = q.filter(contact::Column::ContactId.ne(id));
    }
    Ok(q.count(db).await? > 0)
}

/// Withdraws the live code(s) of a contact (for one number, or all), e.g. when the target changes.
pub async fn close_live_codes<C: ConnectionTrait>(
    db: &C,
    contact_id: &str,
    phone: Option<&str>,
) -> Result<(), DbErr> {
    let mut q = verification::Entity::update_many()
        .col_expr(
            verification::Column::LiveKey,
            Expr::value(Option::<String>::None),
        )
        .col_expr(
            verification::Column::Status,
            Expr::value(VerificationStatus::Closed.as_str()),
        )
        .filter(verification::Column::ContactId.eq(contact_id))
        .filter(verification::Column::LiveKey.is_not_null());
    if let Some(phone) = phone {
        q = q.filter(verification::Column::Phone.eq(phone));
    }
    q.exec(db).await?;
    Ok(())
}

pub async fn add(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let name = ContactName::parse(p.require("Name")?)?;
    let email = EmailAddress::parse(p.require("EmailAddress")?)?;
    let phone = p
        .get("PhoneNumber")
        .map(|s| PhoneNumber::parse(s, &state.policy.supported_country_codes))
        .transpose()?;
    let title = Title::parse(p.require("Title")?)?;
    let types = MessageTypes::parse(&p.list("MessageTypes")?)?;
    if name_in_use(&state.db, account, &name, None).await? {
        return Err(ApiError::NameAlreadyUsed);
    }
    let now = now_ms();
    let id = ContactId::generate();
    contact::ActiveModel {
        contact_id: Set(id.to_string()),
        account_id: Set(account.to_string()),
        name: Set(name.as_str().to_owned()),
        email: Set(email.as_str().to_owned()),
        title: Set(title.as_str().to_owned()),
        message_types: Set(types.to_stored()),
        phone: Set(None),
        pending_phone: Set(phone.map(|p| p.to_string())),
        last_send_ms: Set(None),
        created_ms: Set(now),
        updated_ms: Set(now),
    }
    .insert(&state.db)
    .await
    .map_err(name_taken)?;
    Ok(obj! { "Contact" => json!({ "ContactId": id.to_string(), "CreateDate": format_ms(now) }) })
}

pub async fn update(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let name = p.get("Name").map(ContactName::parse).transpose()?;
    let email = p.get("EmailAddress").map(EmailAddress::parse).transpose()?;
    let phone = p
        .get("PhoneNumber")
        .map(|s| PhoneNumber::parse(s, &state.policy.supported_country_codes))
        .transpose()?;
    let title = p.get("Title").map(Title::parse).transpose()?;
    let types = p.list("MessageTypes")?;
    let types = if types.is_empty() {
        None
    } else {
        Some(MessageTypes::parse(&types)?)
    };

    let txn = msgcontact::db::write_txn(&state.db).await?;
    let current = find_contact(&txn, account, &id).await?;
    if let Some(name) = &name
        && name_in_use(&txn, account, name, Some(id.as_str())).await?
    {
        return Err(ApiError::NameAlreadyUsed);
    }
    let mut am: contact::ActiveModel = current.clone().into();
    if let Some(name) = name {
        am.name = Set(name.as_str().to_owned());
    }
    if let Some(email) = email {
        am.email = Set(email.as_str().to_owned());
    }
    if let Some(title) = title {
        am.title = Set(title.as_str().to_owned());
    }
    if let Some(types) = types {
        am.message_types = Set(types.to_stored());
    }
    if let Some(phone) = phone {
        let phone = phone.to_string();
        let new_pending = if current.phone.as_deref() == Some(phone.as_str()) {
            None
        } else {
            Some(phone)
        };
        if new_pending != current.pending_phone {
            // The old pending number's code must no longer verify anything.
            if let Some(old) = &current.pending_phone {
                close_live_codes(&txn, id.as_str(), Some(old)).await?;
            }
            am.pending_phone = Set(new_pending);
        }
    }
    am.updated_ms = Set(now_ms());
    am.update(&txn).await.map_err(name_taken)?;
    txn.commit().await?;
    Ok(obj! {})
}

pub async fn delete(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    // Members keep no copy of a contact here, so both choices remove the associations.
    let _retain = p.bool("RetainContactInMembers")?.unwrap_or(true);
    let txn = msgcontact::db::write_txn(&state.db).await?;
    let c = find_contact(&txn, account, &id).await?;
    close_live_codes(&txn, id.as_str(), None).await?;
    contact_member::Entity::delete_many()
        .filter(contact_member::Column::ContactId.eq(id.as_str()))
        .exec(&txn)
        .await?;
    contact::Entity::delete_by_id(id.as_str().to_owned())
        .exec(&txn)
        .await?;
    contact_deletion::Entity::insert(contact_deletion::ActiveModel {
        contact_id: Set(id.to_string()),
        account_id: Set(account.to_string()),
        status: Set("Deleted".into()),
        message_types: Set(c.message_types),
        deleted_ms: Set(now_ms()),
    })
    .on_conflict(
        OnConflict::column(contact_deletion::Column::ContactId)
            .update_columns([
                contact_deletion::Column::Status,
                contact_deletion::Column::DeletedMs,
            ])
            .to_owned(),
    )
    .exec_without_returning(&txn)
    .await?;
    txn.commit().await?;
    Ok(obj! { "Status" => "Deleted" })
}

pub async fn deletion_status(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let d = contact_deletion::Entity::find_by_id(id.as_str().to_owned())
        .filter(contact_deletion::Column::AccountId.eq(account.as_str()))
        .one(&state.db)
        .await?;
    match d {
        Some(d) => Ok(obj! { "ContactDeletionStatus" => json!({
            "ContactId": d.contact_id, "Status": d.status, "FailReasonList": Vec::<Value>::new()
        }) }),
        None => {
            find_contact(&state.db, account, &id).await?;
            Err(ApiError::DeletionNotFound)
        }
    }
}

async fn members_of<C: ConnectionTrait>(
    db: &C,
    ids: &[String],
) -> Result<std::collections::HashMap<String, Vec<String>>, ApiError> {
    let rows = contact_member::Entity::find()
        .filter(contact_member::Column::ContactId.is_in(ids.iter().cloned()))
        .order_by_asc(contact_member::Column::MemberId)
        .all(db)
        .await?;
    let mut map: std::collections::HashMap<String, Vec<String>> = Default::default();
    for r in rows {
        map.entry(r.contact_id).or_default().push(r.member_id);
    }
    Ok(map)
}

fn render(c: &contact::Model, members: Vec<String>) -> Value {
    json!({
        "ContactId": c.contact_id,
        "Name": c.name,
        "EmailAddress": c.email,
        "PhoneNumber": c.phone.clone().or_else(|| c.pending_phone.clone()).unwrap_or_default(),
        "Title": c.title,
        "MessageTypes": MessageTypes::from_stored(&c.message_types),
        "Members": members,
        "Status": contact_status(c),
        "CreateDate": format_ms(c.created_ms),
    })
}

pub async fn get(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let c = find_contact(&state.db, account, &id).await?;
    let mut members = members_of(&state.db, std::slice::from_ref(&c.contact_id)).await?;
    Ok(obj! { "Contact" => render(&c, members.remove(&c.contact_id).unwrap_or_default()) })
}

pub async fn list(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let page = p.int("PageNumber", 1, 1_000_000)?;
    let size = p.int("PageSize", 20, 100)?;
    let contact_filter = p.get("ContactId").map(ContactId::parse).transpose()?;
    let member = p.get("Member").map(MemberId::parse).transpose()?;
    let mut q = contact::Entity::find().filter(contact::Column::AccountId.eq(account.as_str()));
    if let Some(id) = &contact_filter {
        q = q.filter(contact::Column::ContactId.eq(id.as_str()));
    }
    let mut associated: std::collections::HashMap<String, i64> = Default::default();
    if let Some(m) = &member {
        let rows = contact_member::Entity::find()
            .filter(contact_member::Column::AccountId.eq(account.as_str()))
            .filter(contact_member::Column::MemberId.eq(m.as_str()))
            .all(&state.db)
            .await?;
        associated = rows
            .into_iter()
            .map(|r| (r.contact_id, r.modify_ms))
            .collect();
        q = q.filter(contact::Column::ContactId.is_in(associated.keys().cloned()));
    }
    let total = q.clone().count(&state.db).await?;
    let rows = q
        .order_by_asc(contact::Column::CreatedMs)
        .order_by_asc(contact::Column::ContactId)
        .offset((page - 1) * size)
        .limit(size)
        .all(&state.db)
        .await?;
    let ids: Vec<String> = rows.iter().map(|c| c.contact_id.clone()).collect();
    let mut members = members_of(&state.db, &ids).await?;
    let contacts: Vec<Value> = rows
        .iter()
        .map(|c| {
            let mut v = render(c, members.remove(&c.contact_id).unwrap_or_default());
            if let Some(ms) = associated.get(&c.contact_id) {
                v["AssociatedDate"] = json!(format_ms(*ms));
            }
            v
        })
        .collect();
    Ok(
        obj! { "TotalCount" => total, "PageNumber" => page, "PageSize" => size, "Contacts" => contacts },
    )
}

pub async fn list_verifications(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let page = p.int("PageNumber", 1, 1_000_000)?;
    let size = p.int("PageSize", 20, 100)?;
    let mut q = contact::Entity::find()
        .filter(contact::Column::AccountId.eq(account.as_str()))
        .filter(contact::Column::PendingPhone.is_not_null());
    if let Some(id) = p.get("ContactId").map(ContactId::parse).transpose()? {
        q = q.filter(contact::Column::ContactId.eq(id.as_str()));
    }
    let total = q.clone().count(&state.db).await?;
    let rows = q
        .order_by_asc(contact::Column::CreatedMs)
        .order_by_asc(contact::Column::ContactId)
        .offset((page - 1) * size)
        .limit(size)
        .all(&state.db)
        .await?;
    let items: Vec<Value> = rows
        .iter()
        .map(|c| json!({ "ContactId": c.contact_id, "Target": c.pending_phone }))
        .collect();
    Ok(
        obj! { "TotalCount" => total, "PageNumber" => page, "PageSize" => size, "ContactVerifications" => items },
    )
}

pub async fn cancel_update(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let phone = p
        .get("PhoneNumber")
        .map(|s| PhoneNumber::parse(s, &state.policy.supported_country_codes))
        .transpose()?;
    if let Some(e) = p.get("EmailAddress") {
        // Email addresses take effect as given (no email channel yet): nothing pending to cancel.
        EmailAddress::parse(e)?;
    }
    let txn = msgcontact::db::write_txn(&state.db).await?;
    let c = find_contact(&txn, account, &id).await?;
    let pending = c.pending_phone.clone();
    match (&phone, &pending) {
        (Some(p), Some(pending)) if p.to_string() != *pending => {
            return Err(ApiError::VerificationNotFound);
        }
        (Some(_), None) => return Err(ApiError::VerificationNotFound),
        _ => {}
    }
    if let Some(pending) = pending {
        close_live_codes(&txn, id.as_str(), Some(&pending)).await?;
        let mut am: contact::ActiveModel = c.into();
        am.pending_phone = Set(None);
        am.updated_ms = Set(now_ms());
        am.update(&txn).await?;
    }
    txn.commit().await?;
    Ok(obj! {})
}

fn members_param(p: &Params) -> Result<Vec<MemberId>, ApiError> {
    let raw = p.list("Members")?;
    if raw.is_empty() {
        return Err(ApiError::MissingParameter("Members"));
    }
    if raw.len() > 100 {
        return Err(ApiError::InvalidParameter("Members"));
    }
    let mut v = raw
        .iter()
        .map(|m| MemberId::parse(m))
        .collect::<Result<Vec<_>, _>>()?;
    v.sort();
    v.dedup();
    Ok(v)
}

fn member_rows(contact_id: &str, members: &[MemberId], ms: i64) -> Vec<Value> {
    members
        .iter()
        .map(|m| json!({ "ContactId": contact_id, "MemberId": m.as_str(), "ModifyDate": format_ms(ms) }))
        .collect()
}

pub async fn associate(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let members = members_param(p)?;
    let txn = msgcontact::db::write_txn(&state.db).await?;
    find_contact(&txn, account, &id).await?;
    let now = now_ms();
    let rows = members.iter().map(|m| contact_member::ActiveModel {
        contact_id: Set(id.to_string()),
        member_id: Set(m.as_str().to_owned()),
        account_id: Set(account.to_string()),
        modify_ms: Set(now),
    });
    contact_member::Entity::insert_many(rows)
        .on_conflict(
            OnConflict::columns([
                contact_member::Column::ContactId,
                contact_member::Column::MemberId,
            ])
            .update_column(contact_member::Column::ModifyMs)
            .to_owned(),
        )
        .exec_without_returning(&txn)
        .await?;
    txn.commit().await?;
    Ok(obj! { "Members" => member_rows(id.as_str(), &members, now) })
}

pub async fn disassociate(state: &AppState, account: &AccountId, p: &Params) -> OpResult {
    let id = contact_id(p)?;
    let members = members_param(p)?;
    let txn = msgcontact::db::write_txn(&state.db).await?;
    find_contact(&txn, account, &id).await?;
    contact_member::Entity::delete_many()
        .filter(contact_member::Column::ContactId.eq(id.as_str()))
        .filter(
            contact_member::Column::MemberId.is_in(members.iter().map(|m| m.as_str().to_owned())),
        )
        .exec(&txn)
        .await?;
    txn.commit().await?;
    Ok(obj! { "Members" => member_rows(id.as_str(), &members, now_ms()) })
}
