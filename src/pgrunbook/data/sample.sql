-- knot のサンプルデータ（sandbox-up とテストで使用）。
-- 会計仕訳・承認・投票・監査ログ。日本語テキスト、2 つのスキーマ、シーケンス、
-- 外部キー、jsonb、bytea、ビュー、Prisma のマイグレーション履歴を含む。
SET client_min_messages = warning;

CREATE SCHEMA accounting;
CREATE SCHEMA audit;

CREATE TABLE public.members (
    id          serial PRIMARY KEY,
    name        text NOT NULL,
    email       text NOT NULL UNIQUE,
    joined_on   date NOT NULL
);

CREATE SEQUENCE accounting.voucher_no_seq START 1000;

CREATE TABLE accounting.journal_entries (
    id              bigserial PRIMARY KEY,
    voucher_no      bigint NOT NULL DEFAULT nextval('accounting.voucher_no_seq'),
    entry_date      date NOT NULL,
    description     text NOT NULL,
    debit_account   text NOT NULL,
    credit_account  text NOT NULL,
    amount          numeric(14, 2) NOT NULL CHECK (amount > 0),
    created_by      integer NOT NULL REFERENCES public.members (id)
);

CREATE TABLE accounting.approvals (
    id           serial PRIMARY KEY,
    entry_id     bigint NOT NULL REFERENCES accounting.journal_entries (id),
    approver_id  integer NOT NULL REFERENCES public.members (id),
    status       text NOT NULL CHECK (status IN ('承認', '差戻し', '保留')),
    comment      text,
    decided_at   timestamptz NOT NULL
);

CREATE TABLE public.votes (
    id         serial PRIMARY KEY,
    topic      text NOT NULL,
    member_id  integer NOT NULL REFERENCES public.members (id),
    choice     text NOT NULL,
    cast_at    timestamptz NOT NULL,
    UNIQUE (topic, member_id)
);

CREATE TABLE audit.audit_log (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL,
    actor_id    integer REFERENCES public.members (id),
    action      text NOT NULL,
    payload     jsonb NOT NULL,
    attachment  bytea
);

CREATE TABLE public._prisma_migrations (
    id                   varchar(36) PRIMARY KEY,
    checksum             varchar(64) NOT NULL,
    finished_at          timestamptz,
    migration_name       varchar(255) NOT NULL,
    logs                 text,
    rolled_back_at       timestamptz,
    started_at           timestamptz NOT NULL DEFAULT now(),
    applied_steps_count  integer NOT NULL DEFAULT 0
);

CREATE VIEW accounting.monthly_totals AS
SELECT date_trunc('month', entry_date)::date AS month,
       debit_account,
       sum(amount) AS total,
       count(*) AS entries
FROM accounting.journal_entries
GROUP BY 1, 2;

INSERT INTO public.members (name, email, joined_on)
SELECT (ARRAY['山田','佐藤','鈴木','高橋','田中','伊藤','渡辺','中村'])[1 + g % 8]
       || (ARRAY['太郎','花子','一郎','美咲','健太','さくら'])[1 + g % 6],
       'member' || g || '@example.jp',
       date '2020-04-01' + g
FROM generate_series(1, 40) AS g;

INSERT INTO accounting.journal_entries (entry_date, description, debit_account, credit_account, amount, created_by)
SELECT date '2025-04-01' + (g % 365),
       (ARRAY['会費収入','備品購入','交通費精算','会場使用料','印刷費','寄付金受領'])[1 + g % 6]
         || '（第' || g || '号）',
       (ARRAY['現金','普通預金','消耗品費','旅費交通費'])[1 + g % 4],
       (ARRAY['会費収入','未払金','普通預金','寄付金収入'])[1 + (g * 7) % 4],
       round((1000 + (g * 7919) % 250000)::numeric / 3, 2),
       1 + g % 40
FROM generate_series(1, 600) AS g;

INSERT INTO accounting.approvals (entry_id, approver_id, status, comment, decided_at)
SELECT g,
       1 + (g * 3) % 40,
       (ARRAY['承認', '差戻し', '保留'])[1 + g % 3],
       CASE WHEN g % 3 = 1 THEN '領収書の添付をお願いします' ELSE NULL END,
       timestamptz '2025-04-02 09:00:00+09' + g * interval '7 hours'
FROM generate_series(1, 600, 2) AS g;

INSERT INTO public.votes (topic, member_id, choice, cast_at)
SELECT t.topic, m.id, (ARRAY['賛成', '反対', '棄権'])[1 + (m.id + length(t.topic)) % 3],
       timestamptz '2025-06-01 10:00:00+09' + m.id * interval '1 minute'
FROM (VALUES ('2025年度予算案'), ('役員選任の件'), ('会則改定（第12条）')) AS t(topic)
CROSS JOIN public.members AS m;

INSERT INTO audit.audit_log (at, actor_id, action, payload, attachment)
SELECT timestamptz '2025-04-01 00:00:00+09' + g * interval '13 minutes',
       1 + g % 40,
       (ARRAY['ログイン', '仕訳登録', '承認', '投票', '設定変更'])[1 + g % 5],
       jsonb_build_object('ip', '192.0.2.' || (g % 250), 'detail', '操作番号 ' || g,
                          'tags', jsonb_build_array('監査', g % 7)),
       CASE WHEN g % 10 = 0 THEN decode(md5('添付' || g), 'hex') ELSE NULL END
FROM generate_series(1, 900) AS g;

INSERT INTO public._prisma_migrations (id, checksum, finished_at, migration_name, started_at, applied_steps_count)
VALUES ('7b1c1d6e-0000-4000-8000-000000000001', repeat('a', 64), '2025-03-01 10:00:01+09',
        '20250301000000_init', '2025-03-01 10:00:00+09', 1),
       ('7b1c1d6e-0000-4000-8000-000000000002', repeat('b', 64), '2025-05-10 10:00:01+09',
        '20250510000000_add_votes', '2025-05-10 10:00:00+09', 1);
