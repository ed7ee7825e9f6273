-- Accounts. The first superuser is created by prestart's seed step (FIRST_SUPERUSER).
CREATE TABLE users (
    id              BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    email           TEXT NOT NULL,
    hashed_password TEXT NOT NULL,
    is_superuser    BOOLEAN NOT NULL DEFAULT false,
    is_active       BOOLEAN NOT NULL DEFAULT true,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Emails compare without case, so Admin@x and admin@x are one account.
CREATE UNIQUE INDEX users_email_key ON users (lower(email));
