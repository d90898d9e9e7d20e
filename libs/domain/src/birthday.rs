//! The birthday reward (README "Birthdays"): points, a voucher, or both, given once a year in
//! the member's birthday day, week or month, in the franchise's time zone. The member's side
//! (when it is given, and the scheduler's due time for it) is in `member/birthday.rs`.

use serde::{Deserialize, Serialize};

use crate::program::bounded;
use crate::{Day, DomainError, Points, Reward, RewardId};

/// When, around the birthday, the reward is given.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BirthdayWindow {
    /// The birthday itself.
    Day,
    /// The week (Monday to Sunday) holding the birthday.
    #[default]
    Week,
    /// The calendar month of the birthday.
    Month,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BirthdayRewardSpec {
    #[serde(default)]
    pub points: Option<i64>,
    #[serde(default)]
    pub reward_id: Option<String>,
    #[serde(default)]
    pub window: Option<BirthdayWindow>,
    /// Days a member must have been enrolled for (0 by default): a birthday given at
    /// enrolment is the member's word, so a franchise can ask for some history first.
    #[serde(default)]
    pub min_days_enrolled: Option<i64>,
}

/// The validated reward: at least one of `points` (0: none) and `reward_id`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct BirthdayReward {
    pub points: Points,
    pub reward_id: Option<RewardId>,
    pub window: BirthdayWindow,
    pub min_days_enrolled: u32,
}

const MAX_POINTS: i64 = 1_000_000_000;
const MAX_MIN_DAYS: i64 = 3_650;

impl BirthdayReward {
    pub fn from_spec(s: &BirthdayRewardSpec, rewards: &[Reward]) -> Result<Self, DomainError> {
        let points = match s.points {
            // 0 is none: the stored form says so.
            Some(p) => bounded("birthday_reward.points", p, 0, MAX_POINTS)?,
            None => 0,
        };
        let reward_id = match &s.reward_id {
            None => None,
            Some(id) => Some(
                RewardId::parse(id)
                    .ok()
                    .filter(|id| rewards.iter().any(|r| &r.id == id))
                    .ok_or_else(|| {
                        DomainError::invalid_program(format!(
                            "birthday_reward.reward_id {id:?} is not a reward of the catalogue"
                        ))
                    })?,
            ),
        };
        if points == 0 && reward_id.is_none() {
            return Err(DomainError::invalid_program(
                "birthday_reward needs points, a reward_id (a voucher), or both",
            ));
        }
        let min_days_enrolled = match s.min_days_enrolled {
            Some(d) => bounded("birthday_reward.min_days_enrolled", d, 0, MAX_MIN_DAYS)? as u32,
            None => 0,
        };
        Ok(BirthdayReward {
            points,
            reward_id,
            window: s.window.unwrap_or_default(),
            min_days_enrolled,
        })
    }
}

/// The month and day of a `YYYY-MM-DD` birthday.
pub fn month_day(birthday: &str) -> Option<(u32, u32)> {
    let (_, m, d) = Day::parse_iso(birthday)?.ymd();
    Some((m, d))
}

/// The birthday of `year` (28 February for 29 February in a year that has none).
pub fn birthday_in(year: i32, (m, d): (u32, u32)) -> Option<Day> {
    Day::from_ymd(year, m, d).or_else(|| Day::from_ymd(year, m, d.saturating_sub(1)))
}

impl BirthdayWindow {
    /// The first and last local days of the window around the birthday of `year`.
    pub fn around(self, year: i32, md: (u32, u32)) -> Option<(Day, Day)> {
        let day = birthday_in(year, md)?;
        Some(match self {
            BirthdayWindow::Day => (day, day),
            BirthdayWindow::Week => {
                // 1970-01-01 was a Thursday: Monday is 0 with this offset.
                let monday = Day(day.0 - (day.0 + 3) % 7);
                (monday, Day(monday.0 + 6))
            }
            BirthdayWindow::Month => {
                let first = Day::from_ymd(year, md.0, 1)?;
                let next = if md.0 == 12 {
                    Day::from_ymd(year + 1, 1, 1)?
                } else {
                    Day::from_ymd(year, md.0 + 1, 1)?
                };
                (first, Day(next.0 - 1))
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(s: &str) -> Day {
        Day::parse_iso(s).unwrap()
    }

    #[test]
    fn windows_hold_the_birthday() {
        let md = (4, 17);
        // 2026-04-17 is a Friday.
        assert_eq!(
            BirthdayWindow::Day.around(2026, md),
            Some((d("2026-04-17"), d("2026-04-17")))
        );
        assert_eq!(
            BirthdayWindow::Week.around(2026, md),
            Some((d("2026-04-13"), d("2026-04-19")))
        );
        assert_eq!(
            BirthdayWindow::Month.around(2026, md),
            Some((d("2026-04-01"), d("2026-04-30")))
        );
        assert_eq!(
            BirthdayWindow::Month.around(2026, (12, 5)),
            Some((d("2026-12-01"), d("2026-12-31")))
        );
        // A leap day's birthday is on 28 February in other years.
        assert_eq!(birthday_in(2027, (2, 29)), Some(d("2027-02-28")));
        assert_eq!(birthday_in(2028, (2, 29)), Some(d("2028-02-29")));
        // A Monday's week starts on it.
        assert_eq!(
            BirthdayWindow::Week.around(2026, (4, 13)).unwrap().0,
            d("2026-04-13")
        );
    }
}
