//! Every rule the linter knows: squawk's, by squawk's names, and the few of ours that know what
//! squawk cannot (how sqlx runs a file). What kind of harm each finds decides whether it is on by
//! default and whether a table nobody uses yet silences it. docs/linting.md gives each its why.

use std::fmt;

use squawk_linter::Rule as Squawk;

/// A rule of ours: squawk has no way to know how sqlx runs a file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Own {
    /// A statement PostgreSQL refuses inside a transaction block, in a file sqlx runs in one.
    NeedsNoTransaction,
    /// More than one statement in a `-- no-transaction` file (sqlx sends it as one query).
    NoTransactionSingleStatement,
    /// A statement the parser cannot read, so no rule checked it.
    UnparsedStatement,
    /// An EXCLUDE constraint added to a table that exists: its index is built under the lock.
    AddingExcludeConstraint,
    /// A query of the release before (its `.sqlx`) no longer prepares, or reads another type,
    /// once the migration ran (`--against`, `--previous-queries`): measured, not guessed.
    BreaksPreviousRelease,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RuleId {
    Squawk(Squawk),
    Own(Own),
}

/// What a rule guards against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A lock that stops reads or writes on a live table for the length of a scan or a rewrite.
    Locking,
    /// Old code (still running during a deploy, or after a rollback) breaks against the new schema.
    Breaking,
    /// The file fails, or commits part of itself, because of how it runs in (or out of) a transaction.
    Transaction,
    /// The SQL is wrong or cannot be checked.
    Correctness,
    /// A schema convention: worth it for some teams, noise for others, so off unless turned on.
    Style,
}

impl RuleId {
    pub fn kind(self) -> Kind {
        match self {
            RuleId::Own(Own::NeedsNoTransaction | Own::NoTransactionSingleStatement) => Kind::Transaction,
            RuleId::Own(Own::UnparsedStatement) => Kind::Correctness,
            RuleId::Own(Own::AddingExcludeConstraint) => Kind::Locking,
            RuleId::Own(Own::BreaksPreviousRelease) => Kind::Breaking,
            RuleId::Squawk(rule) => squawk_kind(rule),
        }
    }

    /// On unless a `.squawk.toml` turns it off: everything that hurts a live database or old code;
    /// conventions and squawk's own opt-in rules wait to be asked for.
    pub fn on_by_default(self) -> bool {
        match self {
            RuleId::Own(_) => true,
            // Covered by needs-no-transaction, which knows every statement PostgreSQL refuses in a
            // transaction block, and reads sqlx's header per file: two findings on one line is noise.
            RuleId::Squawk(Squawk::BanConcurrentIndexCreationInTransaction) => false,
            // prestart's lock_timeout bounds the wait that queues everyone else behind a migration;
            // a statement_timeout would also cancel long work that blocks nobody (a backfill, a
            // VALIDATE, a CONCURRENTLY build left INVALID), so requiring one is a team's policy.
            RuleId::Squawk(Squawk::RequireStatementTimeout | Squawk::RequireTimeoutSettings) => false,
            RuleId::Squawk(rule) => !rule.is_opt_in() && squawk_kind(rule) != Kind::Style,
        }
    }

    /// The file a finding of this rule fails, or lets through.
    pub fn severity(self) -> Severity {
        if self == RuleId::Own(Own::BreaksPreviousRelease) {
            // Not a risk by rule: a query of the release before was seen to break.
            return Severity::Error;
        }
        match self.kind() {
            Kind::Transaction | Kind::Correctness => Severity::Error,
            _ => Severity::Warning,
        }
    }

    pub fn parse(name: &str) -> Option<RuleId> {
        let name = renamed(name).unwrap_or(name);
        Some(match name {
            "needs-no-transaction" => RuleId::Own(Own::NeedsNoTransaction),
            "no-transaction-single-statement" => RuleId::Own(Own::NoTransactionSingleStatement),
            "unparsed-statement" => RuleId::Own(Own::UnparsedStatement),
            "adding-exclude-constraint" => RuleId::Own(Own::AddingExcludeConstraint),
            "breaks-previous-release" => RuleId::Own(Own::BreaksPreviousRelease),
            _ => RuleId::Squawk(name.parse().ok()?),
        })
    }

    /// Every rule, ours first, then squawk's in its own order (aliases left out).
    pub fn all() -> impl Iterator<Item = RuleId> {
        [
            Own::NeedsNoTransaction,
            Own::NoTransactionSingleStatement,
            Own::UnparsedStatement,
            Own::AddingExcludeConstraint,
            Own::BreaksPreviousRelease,
        ]
        .into_iter()
        .map(RuleId::Own)
        .chain(enum_iterator::all::<Squawk>().filter(|r| r.expands_to().is_empty()).map(RuleId::Squawk))
    }
}

impl fmt::Display for RuleId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RuleId::Squawk(rule) => rule.fmt(f),
            RuleId::Own(Own::NeedsNoTransaction) => f.write_str("needs-no-transaction"),
            RuleId::Own(Own::NoTransactionSingleStatement) => f.write_str("no-transaction-single-statement"),
            RuleId::Own(Own::UnparsedStatement) => f.write_str("unparsed-statement"),
            RuleId::Own(Own::AddingExcludeConstraint) => f.write_str("adding-exclude-constraint"),
            RuleId::Own(Own::BreaksPreviousRelease) => f.write_str("breaks-previous-release"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The migration will fail, or nothing could check it.
    Error,
    /// It hurts a live database or old code.
    Warning,
    /// Said for the record; it fails nothing (a rewrite of a table that is empty).
    Note,
}

/// The names of the linter before squawk's, so `-- lint: allow` comments written for it still work.
fn renamed(old: &str) -> Option<&'static str> {
    Some(match old {
        "create-index-non-concurrently" => "require-concurrent-index-creation",
        "add-column-not-null-without-default" => "adding-required-field",
        "alter-column-type" => "changing-column-type",
        "set-not-null" => "adding-not-nullable-field",
        "constraint-without-not-valid" => "constraint-missing-not-valid",
        "rename-column" => "renaming-column",
        "rename-table" => "renaming-table",
        "drop-column" => "ban-drop-column",
        "drop-table" => "ban-drop-table",
        _ => return None,
    })
}

/// Spelled out rule by rule (no catch-all), so a squawk upgrade that adds a rule fails to build
/// here until someone decides what it is.
fn squawk_kind(rule: Squawk) -> Kind {
    use Squawk::*;
    match rule {
        RequireConcurrentIndexCreation
        | RequireConcurrentIndexDeletion
        | ConstraintMissingNotValid
        | AddingFieldWithDefault
        | AddingForeignKeyConstraint
        | ChangingColumnType
        | AddingNotNullableField
        | AddingSerialPrimaryKeyField
        | DisallowedUniqueConstraint
        | PreferRepack
        | BanCreateDomainWithConstraint
        | BanAlterDomainWithAddConstraint
        | RequireConcurrentPartitionDetach
        | RequireConcurrentReindex
        | RequireLockTimeout
        | RequireStatementTimeout
        | RequireTimeoutSettings => Kind::Locking,
        RenamingColumn
        | RenamingTable
        | BanDropDatabase
        | BanDropColumn
        | BanDropTable
        | BanDropNotNull
        | AddingRequiredField
        | BanTruncateCascade
        | BanDropView
        | BanDropFunction
        | BanDropType
        | BanDropDefault
        | BanDropTrigger
        | BanDropSchema
        | BanDropSequence
        | BanDropDomain
        | BanDropConstraint
        | BanDropGeneratedExpression
        | RenamingObject
        | BanSetSchema
        | BanAlterIdentity
        | BanDropExtension
        | BanAlterGeneratedExpression
        | BanDropIndex
        | BanSetDefault
        | BanDisableTrigger
        | BanReplicaIdentity
        | BanDropPolicy
        | BanRevoke
        | BanReplaceViewFunction
        | BanAlterPolicyCondition
        | BanAlterPolicyRoles
        | BanCreatePolicy
        | BanAlterFunctionOptions
        | BanAlterViewOptions
        | BanAlterRoleOptions
        | BanAlterDatabaseOptions
        | BanAlterRowLevelSecurity
        | BanNewWriteRestriction
        | BanAddEnumValue
        | BanAddCompositeAttribute
        | BanAddColumn
        | BanDetachInheritance
        | BanAlterSequenceValues
        | BanAlterSystemOptions
        | BanAlterExtension => Kind::Breaking,
        TransactionNesting | BanConcurrentIndexCreationInTransaction | BanUncommittedTransaction => Kind::Transaction,
        UnusedIgnore | IdentifierTooLong | BanDuplicateColumnAssignments => Kind::Correctness,
        PreferBigintOverInt
        | PreferBigintOverSmallint
        | PreferIdentity
        | PreferRobustStmts
        | PreferTextField
        | PreferTimestampTz
        | BanCharField
        | RequireEnumValueOrdering
        | RequireTableSchema => Kind::Style,
    }
}
