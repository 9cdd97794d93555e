-- The aggregation adclick-aggregator does in file mode, as DuckDB SQL (scripts/bench-peers.sh):
-- exact dedup by impression (the earliest click, ties by click id), duplicates counted in
-- their own minute rows, the ip flood (> 5 per ip, ad and minute) and user flood (> 20 per
-- user, campaign and hour) rules, minute rows by every dimension, hour and day rollups, and
-- the top 10 ads per minute, each written as Parquet. Batch: no event time, no lateness.
-- getenv('DATA') and getenv('OUT') are replaced by run_duckdb.py with the directories.
SET threads = 2;
SET preserve_insertion_order = false;
CREATE TEMP TABLE ranked AS
SELECT impression_id, click_id, ad_id, campaign_id, advertiser_id, publisher_id, event_time,
       event_time // 60000 * 60000 AS minute, coalesce(upper(country), 'ZZ') AS country,
       coalesce(device, 'other') AS device, ip_hash, user_id_hash,
       row_number() OVER (PARTITION BY impression_id ORDER BY event_time, click_id) AS rank
FROM read_json(getenv('DATA') || '/*.ndjson', format = 'newline_delimited',
               ignore_errors = true, maximum_object_size = 1048576,
               columns = {impression_id: 'VARCHAR', click_id: 'VARCHAR', ad_id: 'VARCHAR',
                          campaign_id: 'VARCHAR', advertiser_id: 'VARCHAR',
                          publisher_id: 'VARCHAR', event_time: 'BIGINT', country: 'VARCHAR',
                          device: 'VARCHAR', ip_hash: 'VARCHAR', user_id_hash: 'VARCHAR'})
WHERE impression_id IS NOT NULL AND click_id IS NOT NULL AND ad_id IS NOT NULL
  AND campaign_id IS NOT NULL AND advertiser_id IS NOT NULL AND publisher_id IS NOT NULL
  AND event_time IS NOT NULL AND (country IS NULL OR length(country) = 2);

CREATE TEMP TABLE judged AS
SELECT minute, ad_id, campaign_id, advertiser_id, publisher_id, country, device,
       ip_hash IS NOT NULL AND row_number() OVER (
         PARTITION BY ip_hash, ad_id, minute ORDER BY event_time, click_id) > 5 AS ip_flood,
       user_id_hash IS NOT NULL AND row_number() OVER (
         PARTITION BY user_id_hash, campaign_id, event_time // 3600000
         ORDER BY event_time, click_id) > 20 AS user_flood
FROM ranked WHERE rank = 1;

CREATE TEMP TABLE minute_rows AS
SELECT minute, ad_id, campaign_id, advertiser_id, publisher_id, country, device,
       sum(clicks)::BIGINT AS clicks, sum(duplicates)::BIGINT AS duplicates,
       sum(ip_flood)::BIGINT AS invalid_ip_flood, sum(user_flood)::BIGINT AS invalid_user_flood
FROM (
  SELECT minute, ad_id, campaign_id, advertiser_id, publisher_id, country, device,
         (NOT ip_flood AND NOT user_flood)::INT AS clicks, 0 AS duplicates,
         ip_flood::INT AS ip_flood, (user_flood AND NOT ip_flood)::INT AS user_flood
  FROM judged
  UNION ALL
  SELECT minute, ad_id, campaign_id, advertiser_id, publisher_id, country, device, 0, 1, 0, 0
  FROM ranked WHERE rank > 1
) GROUP BY ALL;

COPY minute_rows TO (getenv('OUT') || '/minute.parquet') (FORMAT parquet);
COPY (SELECT minute // 3600000 * 3600000 AS hour, ad_id, campaign_id, advertiser_id,
             publisher_id, country, device, sum(clicks) AS clicks,
             sum(duplicates) AS duplicates, sum(invalid_ip_flood) AS invalid_ip_flood,
             sum(invalid_user_flood) AS invalid_user_flood
      FROM minute_rows GROUP BY ALL)
  TO (getenv('OUT') || '/hour.parquet') (FORMAT parquet);
COPY (SELECT minute // 86400000 * 86400000 AS day, ad_id, campaign_id, advertiser_id,
             publisher_id, country, device, sum(clicks) AS clicks,
             sum(duplicates) AS duplicates, sum(invalid_ip_flood) AS invalid_ip_flood,
             sum(invalid_user_flood) AS invalid_user_flood
      FROM minute_rows GROUP BY ALL)
  TO (getenv('OUT') || '/day.parquet') (FORMAT parquet);
COPY (SELECT minute, ad_id, clicks FROM (
        SELECT minute, ad_id, sum(clicks) AS clicks FROM minute_rows GROUP BY minute, ad_id)
      QUALIFY row_number() OVER (PARTITION BY minute ORDER BY clicks DESC, ad_id) <= 10)
  TO (getenv('OUT') || '/top.parquet') (FORMAT parquet);
