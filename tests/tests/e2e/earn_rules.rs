//! The earn rules of issue 12 through the API: HQ puts a program with a rounding mode, a
//! minimum basket and multipliers by schedule (`PUT /v1/franchises/{fid}/program`), and the
//! points of each purchase follow them (README "The loyalty program").

use loyalty_domain::Day;
use loyalty_tests::spawn_app;
use reqwest::StatusCode;
use serde_json::{json, Value};

const DAY_MS: i64 = 86_400_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_purchase_earns_by_the_programs_rounding_minimum_and_schedules() {
    let app = spawn_app().await;
    let f = app.franchise("Café Horaires").await;
    // The latest Tuesday at least two days ago, so that its Wednesday is in the past too.
    let today = jiff::Timestamp::now().as_millisecond().div_euclid(DAY_MS);
    let tuesday = (2..=8)
        .map(|n| Day((today - n) as u32))
        .find(|d| {
            d.iso().parse::<jiff::civil::Date>().unwrap().weekday() == jiff::civil::Weekday::Tuesday
        })
        .unwrap();
    let wednesday = Day(tuesday.0 + 1);

    let mut program = loyalty_tests::demo_program();
    program["time_zone"] = json!("Europe/Paris");
    program["rounding"] = json!("nearest");
    program["min_basket_cents"] = json!(300);
    program["bonus_multipliers"] = json!([
        { "name": "Double Tuesday", "multiplier_pct": 200, "days_of_week": ["tuesday"] },
        { "name": "Happy hour", "multiplier_pct": 150, "from_time": "15:00", "to_time": "17:00",
          "stores": [f.store_id] },
        { "name": "Elsewhere", "multiplier_pct": 1000, "stores": ["s_elsewhere"] },
    ]);
    let path = format!("/v1/franchises/{}/program", f.id);
    let r = app
        .put(&path, &f.hq_key, &json!({ "program": program }))
        .await;
    assert_eq!(r.status(), StatusCode::OK);
    let put: Value = r.json().await.unwrap();
    assert_eq!(put["program"]["rounding"], "nearest");
    assert_eq!(put["program"]["min_basket_cents"], 300);
    assert_eq!(put["program"]["bonus_multipliers"][1]["from_time"], "15:00");
    assert_eq!(
        put["program"]["bonus_multipliers"][1]["from_date"],
        Value::Null
    );

    // An inverted range is refused with a clear message.
    let mut bad = program.clone();
    bad["bonus_multipliers"][0]["from_date"] = json!("2026-05-02");
    bad["bonus_multipliers"][0]["to_date"] = json!("2026-05-01");
    let r = app.put(&path, &f.hq_key, &json!({ "program": bad })).await;
    assert_eq!(r.status(), StatusCode::UNPROCESSABLE_ENTITY);
    let problem: Value = r.json().await.unwrap();
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("bonus_multipliers[0].from_date (2026-05-02) is after"),
        "{problem}"
    );

    let m = app.enrol(&f, "+33612340012").await["member_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let buy = |id: &'static str, day: Day, hm: &'static str, cents: i64| {
        let body = json!({ "event_id": id, "member_id": m, "amount_cents": cents,
            "currency": "EUR", "occurred_at": format!("{}T{hm}:00Z", day.iso()) });
        let app = &app;
        let key = f.store_key.clone();
        async move {
            let r = app.post("/v1/purchases?wait_ms=5000", &key, &body).await;
            assert_eq!(r.status(), StatusCode::OK, "{id}");
            let v: Value = r.json().await.unwrap();
            v["outcome"]["points_earned"].as_u64().unwrap()
        }
    };
    // Tuesday 11:00 UTC (midday in Paris), Bronze ×1: 12.50 € doubled is 25 points.
    assert_eq!(buy("er-1", tuesday, "11:00", 1_250).await, 25);
    // Wednesday morning: no schedule, 12.5 points rounded to the nearest is 13.
    assert_eq!(buy("er-2", wednesday, "08:00", 1_250).await, 13);
    // Wednesday 14:30 UTC is 15:30 or 16:30 in Paris: the happy hour of this store,
    // 12.5 × 1.5 = 18.75, so 19.
    assert_eq!(buy("er-3", wednesday, "14:30", 1_250).await, 19);
    // Below the minimum basket: no points, still a visit and a stamp.
    assert_eq!(buy("er-4", wednesday, "14:35", 299).await, 0);
    let s = app.status(&f, &m).await;
    assert_eq!(s["visits"], 4);
    assert_eq!(s["stamps"], 4);
    assert_eq!(s["points"], 50 + 25 + 13 + 19);
}
