//! The traffic model: who sends what, to where, and how statuses follow.
//!
//! - Clients are skewed: the top 1% send half of all messages; within each
//!   group a power law favours the lower indices.
//! - Each client has a home market (85% of its messages) and a category mix.
//! - A message's statuses follow accepted → sent → delivered → read, with
//!   about 3% failing, 7% stuck after `sent`, about 55% of delivered read, and
//!   3% of read messages losing their `delivered` webhook.
//! - Statuses reach the broker after a transit delay: mostly under 2 s, 4%
//!   out of order by up to 2 min, 1% late by 5 min to 3 h.
//! - About 5% of messages' `read` reports another category, and 2% another
//!   country, than their earlier statuses (re-categorised after delivery).

use notiflow_schema::time::{MINUTE_MICROS, SECOND_MICROS};
use notiflow_schema::{Category, Country, Micros, PricingType, Status};

use crate::rng::Rng;

/// Markets with their share of traffic (weights), dial code and subscriber digits.
pub const MARKETS: [(&str, u32, &str, usize); 14] = [
    ("BR", 34, "55", 11),
    ("IN", 20, "91", 10),
    ("ID", 10, "62", 10),
    ("MX", 8, "52", 10),
    ("US", 5, "1", 10),
    ("CO", 4, "57", 10),
    ("AR", 4, "54", 10),
    ("DE", 3, "49", 11),
    ("GB", 3, "44", 10),
    ("NG", 3, "234", 10),
    ("ZA", 2, "27", 9),
    ("ES", 2, "34", 9),
    ("IT", 1, "39", 10),
    ("PT", 1, "351", 9),
];

const CATEGORY_WEIGHTS: [u32; 4] = [30, 45, 15, 10]; // marketing, utility, authentication, service

const TEMPLATES: [&[&str]; 4] = [
    &[
        "promo_black_friday",
        "cart_reminder",
        "new_collection",
        "loyalty_points",
    ],
    &[
        "order_confirmation",
        "shipping_update",
        "payment_receipt",
        "appointment_reminder",
    ],
    &["otp_login", "otp_signup"],
    &[],
];

const ERROR_CODES: [i64; 5] = [131_026, 131_047, 131_049, 130_472, 131_000];

/// A client (tenant) of the platform.
#[derive(Debug, Clone)]
pub struct Client {
    /// `client_id` on the wire.
    pub id: String,
    /// Index into [`MARKETS`] of its home market.
    pub home: usize,
}

/// The fixed population of clients.
#[derive(Debug, Clone)]
pub struct Population {
    /// All clients; index 0.. are the heaviest senders.
    pub clients: Vec<Client>,
    countries: Vec<Country>,
    market_weights: Vec<u32>,
}

impl Population {
    /// `n` clients (at least 100 so "the top 1%" is at least one client).
    pub fn new(n: usize, rng: &mut Rng) -> Self {
        let n = n.max(100);
        let market_weights: Vec<u32> = MARKETS.iter().map(|m| m.1).collect();
        let clients = (0..n)
            .map(|i| Client {
                id: format!("client-{i:05}"),
                home: rng.weighted(&market_weights),
            })
            .collect();
        let countries = MARKETS.iter().filter_map(|m| Country::parse(m.0)).collect();
        Population {
            clients,
            countries,
            market_weights,
        }
    }

    /// Picks the sender of the next message: half the time among the top 1%.
    pub fn pick_client(&self, rng: &mut Rng) -> usize {
        let n = self.clients.len();
        let top = (n / 100).max(1);
        // u² favours low indices: a power law inside each group.
        let u = rng.f64();
        if rng.chance(0.5) {
            ((top as f64) * u * u) as usize
        } else {
            top + (((n - top) as f64) * u * u) as usize
        }
    }

    /// A new message of client `c` at `t`, with its whole status lifecycle.
    pub fn message(&self, seq: u64, c: usize, t: Micros, rng: &mut Rng) -> Message {
        let market = if rng.chance(0.85) {
            self.clients[c].home
        } else {
            rng.weighted(&self.market_weights)
        };
        let category = Category::ALL[rng.weighted(&CATEGORY_WEIGHTS)];
        let templates = TEMPLATES[category.index()];
        let template =
            (!templates.is_empty()).then(|| templates[rng.below(templates.len() as u64) as usize]);
        let (_, _, dial, digits) = MARKETS[market];
        let subscriber = rng.below(10u64.pow(digits as u32 - 1) * 9) + 10u64.pow(digits as u32 - 1);
        Message {
            seq,
            client: c as u32,
            country: self.countries[market],
            dial,
            subscriber,
            category,
            // The platform flags service messages billable: whether they
            // are charged is the rate card's rule (free before 2026-10-01).
            billable: category == Category::Service || !rng.chance(0.01),
            template,
            created: t,
        }
    }
}

/// One message and what every one of its events shares.
#[derive(Debug, Clone, Copy)]
pub struct Message {
    /// Sequence number: the message id is derived from it.
    pub seq: u64,
    /// Index of the client.
    pub client: u32,
    /// Market of the recipient.
    pub country: Country,
    /// Dial code of the recipient's number.
    pub dial: &'static str,
    /// Subscriber number.
    pub subscriber: u64,
    /// Pricing category.
    pub category: Category,
    /// As reported by the platform.
    pub billable: bool,
    /// Template name, if any.
    pub template: Option<&'static str>,
    /// When it was accepted.
    pub created: Micros,
}

impl Message {
    /// The category and country a status of the message reports. Every
    /// status carries them, and the platform re-categorises some messages
    /// after delivery (Meta's pricing updates): about 5% of messages' `read`
    /// carries another category and 2% another country than their earlier
    /// statuses, so billing must take the first billable event's. Decided by
    /// the sequence number alone, so the model's random stream (every other
    /// choice of a seeded run) is what it was without it.
    pub fn reported(&self, status: Status) -> (Category, Country) {
        if status != Status::Read {
            return (self.category, self.country);
        }
        let h = mix(self.seq);
        let category = if h % 100 < 5 {
            let shift = 1 + (h >> 8) % 3;
            Category::ALL[((self.category.index() as u64 + shift) % 4) as usize]
        } else {
            self.category
        };
        let country = if (h >> 16) % 100 < 2 {
            let (code, ..) = MARKETS[((h >> 24) % MARKETS.len() as u64) as usize];
            Country::parse(code)
                .filter(|c| *c != self.country)
                .unwrap_or(self.country)
        } else {
            self.country
        };
        (category, country)
    }
}

impl Message {
    /// How Meta prices the message (every status of it says the same): 5%
    /// in the free entry-point window, a third of utility and service
    /// messages in the customer service window, 15% from producers that do
    /// not send it (None), the rest `regular`. Decided by the sequence
    /// number alone, like [`Message::reported`], so the model's random
    /// stream is what it was without it.
    pub fn pricing_type(&self) -> Option<PricingType> {
        let h = mix(self.seq ^ 0x7072_6963_696e_6721) % 100;
        let in_window = matches!(self.category, Category::Utility | Category::Service);
        match h {
            0..5 => Some(PricingType::FreeEntryPoint),
            5..40 if in_window => Some(PricingType::FreeCustomerService),
            40..55 => None,
            _ => Some(PricingType::Regular),
        }
    }
}

/// splitmix64's finaliser: a well-spread hash of a sequence number.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One status of one message, with when it happened and when it reaches the broker.
#[derive(Debug, Clone, Copy)]
pub struct StatusEvent {
    /// The status.
    pub status: Status,
    /// `event_time`.
    pub event_time: Micros,
    /// When the producer sends it (≥ `event_time`).
    pub arrival: Micros,
    /// Error code of a `failed` status.
    pub error_code: Option<i64>,
}

/// The statuses of `m`, in the order they happen (not the order they arrive).
pub fn lifecycle(m: &Message, rng: &mut Rng, out: &mut Vec<StatusEvent>) {
    out.clear();
    let mut t = m.created;
    let mut push = |status, t: Micros, rng: &mut Rng, error_code| {
        out.push(StatusEvent {
            status,
            event_time: t,
            arrival: t + transit(rng),
            error_code,
        });
    };
    push(Status::Accepted, t, rng, None);
    let fails = rng.chance(0.03);
    let sent = !fails || rng.chance(0.5);
    if sent {
        t += rng.between(100_000, 2 * SECOND_MICROS);
        push(Status::Sent, t, rng, None);
    }
    if fails {
        t += rng.between(200_000, 5 * SECOND_MICROS);
        let code = ERROR_CODES[rng.below(ERROR_CODES.len() as u64) as usize];
        push(Status::Failed, t, rng, Some(code));
        return;
    }
    if !rng.chance(0.93) {
        return; // stuck at sent: the handset never came online
    }
    t += rng.between(500_000, 30 * SECOND_MICROS);
    let read_p = match m.category {
        Category::Authentication => 0.8,
        Category::Marketing => 0.4,
        _ => 0.6,
    };
    let read = rng.chance(read_p);
    if !read || !rng.chance(0.03) {
        push(Status::Delivered, t, rng, None);
    }
    if read {
        t += (rng.exp(5.0 * MINUTE_MICROS as f64) as i64).min(120 * MINUTE_MICROS) + SECOND_MICROS;
        push(Status::Read, t, rng, None);
    }
}

/// Delay between a status and its arrival: mostly quick, sometimes out of order, rarely late.
fn transit(rng: &mut Rng) -> Micros {
    let p = rng.f64();
    if p < 0.95 {
        rng.between(10_000, 2 * SECOND_MICROS)
    } else if p < 0.99 {
        rng.between(2 * SECOND_MICROS, 2 * MINUTE_MICROS)
    } else {
        rng.between(5 * MINUTE_MICROS, 180 * MINUTE_MICROS)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn top_one_percent_sends_about_half() {
        let mut rng = Rng::new(3);
        let pop = Population::new(5000, &mut rng);
        let n = 200_000;
        let top = (0..n).filter(|_| pop.pick_client(&mut rng) < 50).count();
        let share = top as f64 / n as f64;
        assert!((0.48..0.52).contains(&share), "top 1% share {share}");
    }

    #[test]
    fn lifecycles_are_plausible() {
        let mut rng = Rng::new(5);
        let pop = Population::new(1000, &mut rng);
        let (mut failed, mut msgs, mut read_without_delivered) = (0, 0, 0);
        let mut out = Vec::new();
        for seq in 0..50_000 {
            let c = pop.pick_client(&mut rng);
            let m = pop.message(seq, c, 1_000_000_000_000, &mut rng);
            lifecycle(&m, &mut rng, &mut out);
            msgs += 1;
            assert_eq!(out[0].status, Status::Accepted);
            assert!(out.windows(2).all(|w| w[0].event_time < w[1].event_time));
            assert!(out.iter().all(|e| e.arrival > e.event_time));
            let has = |s| out.iter().any(|e| e.status == s);
            failed += usize::from(has(Status::Failed));
            read_without_delivered += usize::from(has(Status::Read) && !has(Status::Delivered));
            assert!(
                out.iter()
                    .all(|e| e.error_code.is_some() == (e.status == Status::Failed))
            );
        }
        let f = failed as f64 / msgs as f64;
        assert!((0.025..0.035).contains(&f), "failed share {f}");
        assert!(read_without_delivered > 0);
    }

    #[test]
    fn some_reads_report_another_category_or_country() {
        let mut rng = Rng::new(9);
        let pop = Population::new(100, &mut rng);
        let (mut category, mut country, n) = (0, 0, 20_000u64);
        for seq in 0..n {
            let m = pop.message(seq, 0, 1_000_000_000_000, &mut rng);
            for s in [Status::Accepted, Status::Sent, Status::Delivered] {
                assert_eq!(m.reported(s), (m.category, m.country));
            }
            let (c, k) = m.reported(Status::Read);
            category += u64::from(c != m.category);
            country += u64::from(k != m.country);
        }
        let share = |x: u64| x as f64 / n as f64;
        assert!((0.04..0.06).contains(&share(category)), "{category}");
        assert!((0.01..0.025).contains(&share(country)), "{country}");
    }
}
