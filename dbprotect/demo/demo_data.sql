-- The generated data of `dbprotect demo`, run by dbprotect/demo/data.py between the two parts of
-- demo_schema.sql, in one transaction with them.
--
-- Every random() draw happens in a MATERIALIZED CTE over generate_series, in index order, so the
-- values do not depend on the join plan: after setseed(), the data is the same every time.
--
-- Placeholders in braces are filled in by data.py with psycopg.sql literals (quoted by psycopg,
-- never by string formatting):
--   seed                 the setseed() value
--   anchor               the fixed "now" of the generated history (a timestamptz)
--   n_tenants, n_users, n_accounts, n_transactions, n_audit_log
--                        rows per table, from table_sizes()
--   countries            the VALUES rows of demo_countries, from demo_words.yaml
--   first_names, last_names, email_domains, merchants, bios
--                        text[] lists from demo_words.yaml; n_<list> is the length of each

SELECT setseed({seed});

CREATE TEMP TABLE demo_countries (k int PRIMARY KEY, code char(2), name text, dial text, tz text,
                                  language text, currency char(3), cities text[]) ON COMMIT DROP;
INSERT INTO demo_countries VALUES
    {countries};

INSERT INTO tenants (tenant_id, name, slug, country_code, plan, settings, created_at)
SELECT md5('tenant-' || t)::uuid,
       (ARRAY['Fyntrix', 'UltraCore', 'Northbank', 'Ledgerly', 'Coinwise', 'Paystream', 'Vaultix',
              'Moneta'])[1 + (t - 1) % 8]
           || CASE WHEN t > 8 THEN ' ' || ((t - 1) / 8 + 1)::text ELSE '' END,
       'tenant-' || t,
       c.code,
       (ARRAY['starter', 'growth', 'growth', 'enterprise'])[1 + t % 4],
       jsonb_build_object('mfa_required', t % 2 = 0, 'data_region', lower(c.code), 'max_users', 1000 * (1 + t % 5)),
       timestamptz '2022-01-01 00:00:00+00' + (t * interval '9 days')
FROM generate_series(1, {n_tenants}) AS t
JOIN demo_countries c ON c.k = t % {n_countries};

WITH s AS MATERIALIZED (
    SELECT i, floor(random() * {n_countries})::int AS k, floor(random() * {n_first_names})::int AS fi,
           floor(random() * {n_last_names})::int AS li, random() AS r1, random() AS r2, random() AS r3, random() AS r4,
           random() AS r5, random() AS r6, random() AS r7, random() AS r8, random() AS r9, random() AS r10
    FROM generate_series(1, {n_users}) AS i
), p AS (
    SELECT s.*, c.code, c.name AS country, c.dial, c.tz, c.language, c.currency,
           c.cities[1 + floor(s.r9 * array_length(c.cities, 1))::int] AS city,
           ({first_names})[1 + s.fi] AS fn, ({last_names})[1 + s.li] AS ln,
           timestamptz '2023-01-01 00:00:00+00' + s.r6 * interval '1000 days' AS created,
           floor(s.r7 * s.r7 * 400)::int AS logins
    FROM s JOIN demo_countries c ON c.k = s.k
)
INSERT INTO users (id, tenant_id, phone_number, phone_number_verified, email, email_verified, name, first_name,
                   last_name, date_of_birth, gender, country_code, timezone, language, is_active, is_deleted,
                   is_verified, is_premium, last_login_at, last_login_ip, last_login_device, last_login_location,
                   login_count, created_at, created_ip, updated_at, deleted_at, preferences, settings, metadata,
                   referral_code, referred_by, cognito_username, cognito_status, profile_picture_url, bio)
SELECT md5('user-' || i)::uuid,
       md5('tenant-' || (1 + i % {n_tenants}))::uuid,
       CASE WHEN r1 < 0.92
            THEN '+' || dial || (6 + i % 4)::text || lpad(((i::bigint * 7919) % 100000000)::text, 8, '0') END,
       r1 < 0.92 AND r2 < 0.85,
       CASE WHEN r1 > 0.04 THEN lower(translate(fn || '.' || ln, 'éèüöäáñ''', 'eeuoaan')) || i
                                || '@' || ({email_domains})[1 + i % {n_email_domains}] END,
       r1 > 0.04 AND r3 < 0.8,
       fn || ' ' || ln, fn, ln,
       date '1950-01-01' + floor(r3 * 19700)::int,
       (ARRAY['female', 'male', 'female', 'male', 'non-binary', 'undisclosed'])[1 + floor(r4 * 6)::int],
       code, tz, CASE WHEN r5 < 0.3 THEN 'en' ELSE language END,
       NOT (r5 > 0.97) AND r8 > 0.03,
       r5 > 0.97,
       r2 < 0.7,
       r8 < 0.12,
       CASE WHEN logins > 0 THEN created + r10 * ({anchor} - created) END,
       CASE WHEN logins = 0 THEN NULL
            WHEN i % 9 = 0 THEN '2001:db8::'::inet + (abs(hashint8(i)) % 1000000000)
            ELSE '11.0.0.0'::inet + (abs(hashint8(i)) % 3000000000) END,
       CASE WHEN logins > 0 THEN (ARRAY['Mobile', 'Mobile', 'Desktop', 'Tablet'])[1 + floor(r9 * 4)::int] END,
       CASE WHEN logins > 0 THEN city || ', ' || country END,
       logins,
       created,
       '11.0.0.0'::inet + (abs(hashint8(-i)) % 3000000000),
       greatest(created, CASE WHEN logins > 0 THEN created + r10 * ({anchor} - created) END),
       CASE WHEN r5 > 0.97 THEN created + (r5 - 0.97) * 30 * interval '20 days' END,
       jsonb_build_object('notifications', jsonb_build_object('email', r2 > 0.3, 'sms', r3 > 0.6, 'push', r4 > 0.2),
                          'theme', (ARRAY['light', 'dark', 'system'])[1 + i % 3], 'currency', currency),
       jsonb_build_object('two_factor', r8 < 0.4, 'marketing_opt_in', r9 < 0.35,
                          'statement_delivery', (ARRAY['email', 'app', 'post'])[1 + floor(r10 * 3)::int]),
       jsonb_build_object('signup_source', (ARRAY['ios', 'android', 'web', 'partner'])[1 + floor(r6 * 4)::int],
                          'app_version', '3.' || (i % 12) || '.' || (i % 7), 'kyc_level', floor(r7 * 3)::int),
       'FX' || upper(lpad(to_hex((i::bigint * 2654435761) % 4294967296), 8, '0')),
       CASE WHEN i > 10 AND r9 < 0.2 THEN md5('user-' || (1 + floor(r10 * (i - 1))::int))::uuid END,
       lower(translate(fn, 'éèüöäáñ', 'eeuoaan')) || '_' || i,
       (ARRAY['CONFIRMED', 'CONFIRMED', 'CONFIRMED', 'CONFIRMED', 'UNCONFIRMED',
              'RESET_REQUIRED'])[1 + floor(r1 * 6)::int],
       CASE WHEN r4 < 0.6 THEN 'https://cdn.fyntrix.example/avatars/' || md5('avatar-' || i) || '.jpg' END,
       CASE WHEN r10 < 0.25 THEN ({bios})[1 + i % {n_bios}] END
FROM p;

WITH s AS MATERIALIZED (
    SELECT j, random() AS r1, random() AS r2, random() AS r3, random() AS r4
    FROM generate_series(1, {n_accounts}) AS j
)
INSERT INTO accounts (account_id, tenant_id, customer_id, account_number, account_type, currency, balance,
                      available_balance, interest_rate, status, opened_date, closed_date, created_at, updated_at)
SELECT md5('account-' || j)::uuid, u.tenant_id, u.id,
       coalesce(u.country_code, 'GB') || lpad((j * 7 % 97)::text, 2, '0') || 'FYNX' || lpad(j::text, 14, '0'),
       t.kind::account_type,
       CASE u.country_code WHEN 'US' THEN 'USD' WHEN 'GB' THEN 'GBP' WHEN 'IN' THEN 'INR' WHEN 'AU' THEN 'AUD'
                           WHEN 'SG' THEN 'SGD' WHEN 'JP' THEN 'JPY' ELSE 'EUR' END,
       t.balance, t.balance - CASE WHEN s.r3 < 0.2 THEN round((s.r3 * 500)::numeric, 4) ELSE 0 END,
       CASE t.kind WHEN 'savings' THEN round((0.5 + s.r2 * 4)::numeric, 2)
                   WHEN 'credit' THEN round((14 + s.r2 * 12)::numeric, 2) END,
       t.status::account_status,
       (u.created_at + s.r4 * interval '30 days')::date,
       CASE WHEN t.status = 'closed' THEN (u.created_at + interval '60 days' + s.r4 * interval '200 days')::date END,
       u.created_at + s.r4 * interval '30 days',
       u.created_at + s.r4 * interval '30 days' + s.r1 * interval '120 days'
FROM s
JOIN users u ON u.id = md5('user-' || (1 + (s.j - 1) % {n_users}))::uuid
CROSS JOIN LATERAL (
    SELECT k.kind,
           CASE k.kind WHEN 'credit' THEN -round((s.r2 * s.r2 * 8000)::numeric, 4)
                       ELSE round((s.r2 * s.r2 * s.r2 * 250000)::numeric, 4) END AS balance,
           (ARRAY['active', 'active', 'active', 'active', 'active', 'active', 'pending', 'frozen',
                  'closed'])[1 + floor(s.r3 * 9)::int] AS status
    FROM (SELECT (ARRAY['checking', 'checking', 'savings', 'savings', 'credit',
                        'investment'])[1 + floor(s.r1 * 6)::int] AS kind) k
) t;

WITH s AS MATERIALIZED (
    SELECT x, floor(random() * {n_accounts})::int + 1 AS acct, random() AS r1, random() AS r2, random() AS r3,
           random() AS r4, random() AS r5
    FROM generate_series(1, {n_transactions}) AS x
)
INSERT INTO transactions (tenant_id, account_id, transaction_type, amount, currency, balance_after, description,
                          reference, status, transaction_date, posted_date, metadata, created_at)
SELECT a.tenant_id, a.account_id, k.kind::transaction_type,
       CASE WHEN k.kind IN ('deposit', 'interest', 'refund') THEN 1 ELSE -1 END
           * round((exp(s.r2 * 8) / CASE WHEN k.kind IN ('fee', 'interest') THEN 50 ELSE 1 END)::numeric, 2),
       a.currency,
       round((a.balance + (s.r3 - 0.5) * 2000)::numeric, 4),
       CASE k.kind WHEN 'card_payment' THEN ({merchants})[1 + x % {n_merchants}]
                   WHEN 'transfer' THEN 'Transfer to ' || ({first_names})[1 + x % {n_first_names}]
                   WHEN 'fee' THEN 'Monthly account fee' WHEN 'interest' THEN 'Interest paid'
                   ELSE initcap(k.kind) END,
       'TX' || lpad(x::text, 10, '0'),
       st.status::transaction_status,
       td.at,
       CASE WHEN st.status IN ('posted', 'reversed') THEN td.at + s.r5 * interval '2 days' END,
       CASE WHEN k.kind = 'card_payment'
            THEN jsonb_build_object('channel', 'card', 'mcc', 5000 + x % 999,
                                    'card_last4', lpad((x % 10000)::text, 4, '0'),
                                    'geo', jsonb_build_object('lat', round((s.r4 * 120 - 60)::numeric, 5),
                                                              'lon', round((s.r5 * 340 - 170)::numeric, 5)))
            ELSE jsonb_build_object('channel', (ARRAY['app', 'web', 'api', 'branch'])[1 + x % 4],
                                    'initiated_by', md5('user-' || (1 + x % {n_users}))::uuid) END,
       td.at
FROM s
JOIN accounts a ON a.account_id = md5('account-' || s.acct)::uuid
CROSS JOIN LATERAL (SELECT (ARRAY['card_payment', 'card_payment', 'card_payment', 'transfer', 'transfer', 'deposit',
                                  'withdrawal', 'fee', 'interest', 'refund'])[1 + floor(s.r1 * 10)::int] AS kind) k
CROSS JOIN LATERAL (SELECT CASE WHEN s.r4 < 0.90 THEN 'posted' WHEN s.r4 < 0.96 THEN 'pending'
                                WHEN s.r4 < 0.99 THEN 'failed' ELSE 'reversed' END AS status) st
CROSS JOIN LATERAL (SELECT a.created_at + s.r3 * ({anchor} - a.created_at) AS at) td;

WITH s AS MATERIALIZED (
    SELECT e, floor(random() * {n_users})::int + 1 AS usr, random() AS r1, random() AS r2, random() AS r3
    FROM generate_series(1, {n_audit_log}) AS e
)
INSERT INTO audit_log (tenant_id, user_id, action, entity_type, entity_id, old_values, new_values, ip_address,
                       user_agent, "timestamp")
SELECT u.tenant_id, u.id, k.action, k.entity,
       CASE k.entity WHEN 'account' THEN md5('account-' || (1 + (s.usr - 1) % {n_accounts}))::uuid ELSE u.id END,
       CASE k.action WHEN 'user.update_profile' THEN jsonb_build_object('timezone', 'UTC', 'language', 'en')
                     WHEN 'account.freeze' THEN jsonb_build_object('status', 'active') END,
       CASE k.action WHEN 'user.update_profile' THEN jsonb_build_object('timezone', u.timezone, 'language', u.language)
                     WHEN 'account.freeze' THEN jsonb_build_object('status', 'frozen', 'reason', 'suspected fraud')
                     WHEN 'user.login' THEN jsonb_build_object('device', coalesce(u.last_login_device, 'Mobile'))
                     ELSE jsonb_build_object('ok', true) END,
       '11.0.0.0'::inet + (abs(hashint8(s.e)) % 3000000000),
       (ARRAY['Fyntrix/3.4 (iPhone; iOS 17.5)', 'Fyntrix/3.4 (Android 14; Pixel 8)',
              'Mozilla/5.0 (Windows NT 10.0; Win64; x64) Chrome/126.0',
              'Mozilla/5.0 (Macintosh) Safari/17.4'])[1 + s.e % 4],
       u.created_at + s.r3 * ({anchor} - u.created_at)
FROM s
JOIN users u ON u.id = md5('user-' || s.usr)::uuid
CROSS JOIN LATERAL (
    SELECT (ARRAY['user.login', 'user.login', 'user.login', 'user.update_profile', 'user.enable_mfa',
                  'account.open', 'account.freeze', 'transaction.approve'])[1 + floor(s.r1 * 8)::int] AS action
) a
CROSS JOIN LATERAL (SELECT a.action, CASE WHEN a.action LIKE 'account.%' THEN 'account'
                                          WHEN a.action LIKE 'transaction.%' THEN 'transaction'
                                          ELSE 'user' END AS entity) k;
